"""Pose optimisers on SE(3): Levenberg-Marquardt, gradient descent and Adam.

All three move a batch of poses ``camera_from_world`` ``(B, 4, 4)`` by left increments
``T <- exp(xi^) T`` (:func:`~SphericalRegLib.geometry.perturb_left`), so a twist means the same
thing in every optimiser: rotation (radians) about the X-ray source, then translation (mm) in
the camera frame. They share :class:`OptimizeResult` and its history, so a convergence plot can
put them on one axis.

``residual_fn`` and ``cost_fn`` always receive the whole batch, also after some elements have
stopped (stopped elements are frozen, not dropped), and must treat batch elements
independently: element b's output may depend on pose b only. :func:`twist_jacobian` relies on
this to get all ``B`` Jacobians from six forward-mode passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .geometry import perturb_left, rotation_angle, se3_inverse

__all__ = [
    "OptimizeResult",
    "twist_jacobian",
    "twist_gradient",
    "least_squares_cost",
    "levenberg_marquardt",
    "gradient_descent",
    "adam",
]

ResidualFn = Callable[[Tensor], Tensor]
BoundsFn = Callable[[Tensor], Tensor]

DAMPING_RULES = ("simple", "nielsen")

EXTEND_GAIN = 1.5
"""Gain ratio above which :func:`levenberg_marquardt` tries its accepted step doubled. Along an
undamped Gauss-Newton step of a cost that is quadratic there, the ratio is 2 - (the cost's
curvature / the model's): 1 where the model is right, 2 where the cost is flat along the step."""


@dataclass
class OptimizeResult:
    """What every optimiser returns.

    ``history[k]`` is the state after ``k`` iterations (``history[0]`` is the start), a dict of
    detached tensors: ``cost`` (B,), ``pose`` (B, 4, 4), ``accepted`` (B,) (whether iteration k
    moved the pose), ``damping`` (B,) (LM's lambda; NaN for first-order methods) and ``active``
    (B,) (whether the element was still running when iteration k started).
    ``residual`` (B, M) and ``jacobian`` (B, M, 6): LM's at the final pose (None for first-order
    methods); ``exact`` (B,): whether that Jacobian was computed there rather than Broyden-updated.
    """

    pose: Tensor
    cost: Tensor
    iterations: Tensor
    converged: Tensor
    diverged: Tensor
    history: list[dict[str, Tensor]] = field(default_factory=list)
    residual: Tensor | None = None
    jacobian: Tensor | None = None
    exact: Tensor | None = None

    def stacked(self, key: str) -> Tensor:
        """One history entry over iterations: ``(n_iters + 1, B, ...)``."""
        return torch.stack([h[key] for h in self.history])


def least_squares_cost(residual_fn: ResidualFn) -> Callable[[Tensor], Tensor]:
    """``0.5 ||r||^2`` per batch element, the cost LM minimises, for the first-order optimisers."""
    return lambda pose: 0.5 * residual_fn(pose).pow(2).sum(-1)


def twist_jacobian(
    residual_fn: ResidualFn, pose: Tensor, *, create_graph: bool = False, method: str = "forward"
) -> tuple[Tensor, Tensor]:
    """Residual and its Jacobian with respect to a left twist at ``pose``.

    ``pose (B, 4, 4) -> r (B, M), J (B, M, 6)`` with ``J = d r(exp(xi^) T) / d xi`` at ``xi = 0``.

    ``method="forward"``: one twist ``xi (6,)`` shared by the whole batch, so six
    Jacobian-vector products (vectorised by ``torch.func.jacfwd``) give every element's
    Jacobian whatever ``B`` and ``M`` are; the default, since a pixel residual has thousands of
    entries. ``method="reverse"``: ``M`` backward passes through one graph, which can be cheaper
    for a few residuals (16 token distances) through an encoder whose forward-mode derivatives
    are slow (``grid_sample``'s is a composite of elementwise ops in this torch).
    ``create_graph`` keeps ``r`` and ``J`` differentiable with respect to whatever
    ``residual_fn`` and ``pose`` depend on. Both come back in the pose's dtype, whatever the
    residual's (a float32 renderer under float64 poses).
    """
    differentiable = create_graph and torch.is_grad_enabled()
    if method == "forward":
        xi = torch.zeros(6, dtype=pose.dtype, device=pose.device)

        def f(xi: Tensor) -> tuple[Tensor, Tensor]:
            r = residual_fn(perturb_left(xi, pose))
            return r, r

        with torch.set_grad_enabled(differentiable):
            J, r = torch.func.jacfwd(f, has_aux=True)(xi)
        return r.to(pose.dtype), J.to(pose.dtype)
    if method == "reverse":
        with torch.enable_grad():
            xi = torch.zeros(*pose.shape[:-2], 6, dtype=pose.dtype, device=pose.device)
            xi.requires_grad_(True)
            r = residual_fn(perturb_left(xi, pose))
            rows = [
                torch.autograd.grad(r[:, m].sum(), xi, retain_graph=True, create_graph=differentiable)[0]
                for m in range(r.shape[1])
            ]
        r, J = r.to(pose.dtype), torch.stack(rows, 1)
        return (r, J) if differentiable else (r.detach(), J.detach())
    raise ValueError(f"method must be 'forward' or 'reverse', got {method!r}")


def twist_gradient(
    cost_fn: Callable[[Tensor], Tensor], pose: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """Cost ``(B,)`` and its gradient ``(B, 6)`` with respect to a left twist at ``pose``.

    One backward pass: the costs of independent elements are summed, so each element's twist
    receives only its own gradient.
    """
    with torch.enable_grad():
        xi = torch.zeros(*pose.shape[:-2], 6, dtype=pose.dtype, device=pose.device)
        xi.requires_grad_(True)
        cost = cost_fn(perturb_left(xi, pose)).to(pose.dtype)
        (g,) = torch.autograd.grad(cost.sum(), xi, create_graph=create_graph)
    return cost, g


def _step_sizes(xi: Tensor) -> tuple[Tensor, Tensor]:
    return xi[..., :3].norm(dim=-1), xi[..., 3:].norm(dim=-1)


def _inside(
    pose: Tensor,
    pose0: Tensor,
    bounds: BoundsFn | None,
    max_rotation: float | None,
    max_translation: float | None,
) -> Tensor:
    """Whether each pose lies in the trust region around ``pose0``, measured by the left
    displacement ``D = T T0^-1``: its rotation angle (rad) and translation (mm, camera frame)."""
    ok = torch.ones(pose.shape[:-2], dtype=torch.bool, device=pose.device)
    if max_rotation is not None or max_translation is not None:
        D = pose @ se3_inverse(pose0)
        if max_rotation is not None:
            eye = torch.eye(3, dtype=pose.dtype, device=pose.device).expand_as(D[..., :3, :3])
            ok = ok & (rotation_angle(eye, D[..., :3, :3]) <= max_rotation)
        if max_translation is not None:
            ok = ok & (D[..., :3, 3].norm(dim=-1) <= max_translation)
    if bounds is not None:
        ok = ok & bounds(pose).to(torch.bool)
    return ok


def _entry(cost, pose, accepted, damping, active) -> dict[str, Tensor]:
    return {
        "cost": cost.detach().clone(),
        "pose": pose.detach().clone(),
        "accepted": accepted.detach().clone(),
        "damping": damping.detach().clone(),
        "active": active.detach().clone(),
    }


def _check_pose(pose0: Tensor) -> None:
    if pose0.ndim != 3 or pose0.shape[-2:] != (4, 4):
        raise ValueError(f"pose0 must be (B, 4, 4), got {tuple(pose0.shape)}")


def levenberg_marquardt(
    residual_fn: ResidualFn,
    pose0: Tensor,
    *,
    max_iters: int = 30,
    damping: float = 1e-3,
    step_tol: tuple[float, float] = (1e-6, 1e-4),
    cost_tol: float = 1e-8,
    patience: int = 2,
    bounds: BoundsFn | None = None,
    max_rotation: float | None = None,
    max_translation: float | None = None,
    callback: Callable[[int, dict[str, Tensor]], bool | None] | None = None,
    differentiable: bool = False,
    jacobian: str = "forward",
    max_damping: float = 1e10,
    free: Tensor | None = None,
    broyden: bool = False,
    max_extensions: int = 0,
    damping_rule: str = "simple",
) -> OptimizeResult:
    """Minimise ``0.5 ||r(T)||^2`` per batch element by Levenberg-Marquardt on SE(3).

    ``residual_fn: (B, 4, 4) -> (B, M)``; ``pose0 (B, 4, 4)`` camera_from_world. Each iteration
    solves ``(J^T J + lambda diag(J^T J)) delta = -J^T r`` (Marquardt's scaling, the diagonal
    floored at ``1e-9`` of its largest entry) and tries ``T <- exp(delta^) T``. The gain ratio
    ``rho`` (actual over predicted reduction) decides: ``rho > 0`` accepts, otherwise the pose is
    kept. ``damping_rule="simple"``: an accepted step divides lambda by 3, a rejected one doubles
    it. ``"nielsen"`` (Madsen, Nielsen & Tingleff 2004, eq. 2.21): an accepted step multiplies
    lambda by ``max(1/3, 1 - (2 rho - 1)^3)`` and resets ``nu`` to 2, a rejected one multiplies it
    by ``nu`` and doubles ``nu``, so a run of rejections raises lambda 2, 8, 64, 1024 times instead
    of 2, 4, 8, 16: a start whose damping is far too small wastes 4 iterations, not 9. A trial
    with a non-finite residual or outside the trust region multiplies lambda by 10 either way.
    Stopping on a small step within 5 iterations of such a trial counts as diverged (blocked), not
    converged.

    An element stops as *converged* when a proposed step is below ``step_tol`` = (rotation
    rad, translation mm), when ``patience`` accepted steps in a row lower the cost by less
    than ``cost_tol`` relative, when a rejected step's own linear model promised less than that
    (at a noise floor LM would otherwise raise lambda until the cap), or when its cost is exactly
    zero. It stops as *diverged* when no damping up to ``max_damping`` finds a trial pose with a
    finite residual inside the trust region (``bounds(T) -> (B,)`` bool, or ``max_rotation`` rad /
    ``max_translation`` mm of left displacement from ``pose0``), or its Jacobian is non-finite; it
    then keeps its last good pose. Otherwise it runs ``max_iters`` iterations.
    ``callback(k, history[k])`` returning True stops every element.

    ``differentiable=True`` keeps the graph through the Jacobians, the solves and the
    accept/reject choices (``torch.where``), so the unrolled optimisation can be
    backpropagated into the parameters of ``residual_fn``. Gradients through an element that
    met a non-finite residual may themselves be NaN. ``jacobian`` picks the
    :func:`twist_jacobian` method. ``free`` (6,) bool: the twist components LM may move (rotation
    x, y, z, translation x, y, z in the camera frame); the others stay as they are (default all).

    ``broyden=True`` replaces the Jacobian after an accepted step by Broyden's rank-one update
    (Madsen, Nielsen & Tingleff, *Methods for non-linear least squares problems*, 2004, sec. 3.4)
    instead of recomputing it: one residual per step instead of six derivative passes. The exact
    Jacobian is recomputed whenever a step made with an updated one is rejected (without raising
    lambda: the Jacobian, not the step length, is suspect) and whenever a stopping test fires
    with one, so an element only ever stops on an exact Jacobian. Not with ``differentiable``.

    ``max_extensions``: an accepted step that lowered the cost by more than :data:`EXTEND_GAIN` times
    what its linear model promised (the cost curves less along the step than Gauss-Newton assumes,
    as where a large residual's own curvature cancels part of ``J^T J``) is doubled, up to this
    many times, while each doubling lowers the cost further: one residual per doubling instead of a
    derivative pass per iteration. Not with ``differentiable``.
    """
    _check_pose(pose0)
    if damping_rule not in DAMPING_RULES:
        raise ValueError(f"damping_rule must be one of {DAMPING_RULES}, got {damping_rule!r}")
    if differentiable and (broyden or max_extensions):
        raise ValueError("broyden updates and step extensions are not differentiable; pass broyden=False and "
                         "max_extensions=0 with differentiable=True")
    B = pose0.shape[0]
    device = pose0.device
    grad_mode = torch.enable_grad() if differentiable else torch.no_grad()
    with grad_mode:
        pose = pose0 if differentiable else pose0.detach()
        lam = torch.full((B,), float(damping), dtype=pose0.dtype, device=device)
        nu = torch.full((B,), 2.0, dtype=pose0.dtype, device=device)
        r, J = twist_jacobian(residual_fn, pose, create_graph=differentiable, method=jacobian)
        cost = 0.5 * r.pow(2).sum(-1)
        finite = torch.isfinite(cost) & torch.isfinite(J).flatten(1).all(-1)
        diverged = ~finite
        converged = finite & (cost == 0)
        active = ~(diverged | converged)
        iterations = torch.zeros(B, dtype=torch.long, device=device)
        stall = torch.zeros(B, dtype=torch.long, device=device)
        false = torch.zeros(B, dtype=torch.bool, device=device)
        history = [_entry(cost, pose, false, lam, active)]
        rot_tol, trans_tol = step_tol
        eye6 = torch.eye(6, dtype=pose0.dtype, device=device)
        since_barrier = torch.full((B,), max_iters + 1, dtype=torch.long, device=device)
        exact = torch.ones(B, dtype=torch.bool, device=device)  # J computed, not updated, at pose

        for k in range(1, max_iters + 1):
            if not bool(active.any()):
                break
            was_active = active.clone()
            # Frozen elements may hold NaN; zero them so one bad element cannot poison the solve.
            Jc = torch.where(active[:, None, None], J, torch.zeros_like(J))
            if free is not None:
                Jc = Jc * free.to(Jc)
            rc = torch.where(active[:, None], r, torch.zeros_like(r))
            A = Jc.transpose(-1, -2) @ Jc
            g = (Jc.transpose(-1, -2) @ rc[..., None])[..., 0]
            diag = torch.diagonal(A, dim1=-2, dim2=-1)
            floor = 1e-9 * diag.amax(-1, keepdim=True) + torch.finfo(A.dtype).tiny
            D = torch.maximum(diag, floor)
            H = A + (lam[:, None] * D)[..., None] * eye6
            delta = -torch.linalg.solve_ex(H, g[..., None])[0][..., 0]
            predicted = 0.5 * (delta * (lam[:, None] * D * delta - g)).sum(-1)

            trial = perturb_left(delta, pose)
            r_trial = residual_fn(trial).to(pose.dtype)
            cost_trial = 0.5 * r_trial.pow(2).sum(-1)
            ok = torch.isfinite(cost_trial) & _inside(
                trial, pose0, bounds, max_rotation, max_translation
            )
            rho = (cost - cost_trial) / predicted.clamp_min(torch.finfo(A.dtype).tiny)
            accept = active & ok & (rho > 0)
            extend = accept & (rho > EXTEND_GAIN)
            scale = torch.ones_like(cost)
            for _ in range(max_extensions):
                if not bool(extend.any()):
                    break
                longer = perturb_left(2 * scale[:, None] * delta, pose)
                r_longer = residual_fn(longer).to(pose.dtype)
                cost_longer = 0.5 * r_longer.pow(2).sum(-1)
                better = extend & (cost_longer < cost_trial) & _inside(longer, pose0, bounds, max_rotation,
                                                                      max_translation)
                trial = torch.where(better[:, None, None], longer, trial)
                r_trial = torch.where(better[:, None], r_longer, r_trial)
                cost_trial = torch.where(better, cost_longer, cost_trial)
                scale = torch.where(better, 2 * scale, scale)
                extend = better
            delta = scale[:, None] * delta
            # with an updated Jacobian a rejection blames the Jacobian: recompute it, keep lambda
            suspect = active & ~accept & ~exact

            # A trial outside the trust region or with a non-finite residual is rejected like any
            # other, with stronger damping; only when no damping finds an admissible step is the
            # element given up as diverged.
            newly_diverged = active & ~ok & exact & (lam * 10 > max_damping)
            rot, trans = _step_sizes(delta)
            small = (rot <= rot_tol) & (trans <= trans_tol)
            rel_decrease = (cost - cost_trial) / cost.clamp_min(torch.finfo(A.dtype).tiny)
            stall = torch.where(accept, torch.where(rel_decrease < cost_tol, stall + 1, 0), stall)

            if broyden:
                rows = (r_trial - r - (J @ delta[..., None])[..., 0]) / delta.pow(2).sum(-1, keepdim=True).clamp_min(
                    torch.finfo(A.dtype).tiny)
                J = torch.where(accept[:, None, None], J + rows[..., None] * delta[:, None, :], J)
            pose = torch.where(accept[:, None, None], trial, pose)
            cost = torch.where(accept, cost_trial, cost)
            r = torch.where(accept[:, None], r_trial, r)
            if damping_rule == "nielsen":
                after_accept, after_reject = lam * (1 - (2 * rho - 1).pow(3)).clamp_min(1 / 3), lam * nu
                nu = torch.where(accept, torch.full_like(nu, 2.0),
                                 torch.where(active & ok & ~suspect, nu * 2, nu))
            else:
                after_accept, after_reject = lam / 3, lam * 2
            lam = torch.where(accept, after_accept, torch.where(suspect, lam, torch.where(
                active & ok, after_reject, torch.where(active, lam * 10, lam))))
            iterations = iterations + active.long()
            # Stopping right after a trial was inadmissible means pressing against the trust region or
            # a non-finite region: that is not a minimum, whatever the step size says.
            since_barrier = torch.where(active & ~ok & exact, 0, since_barrier + 1)
            # a rejected step whose own linear model promised less than cost_tol: nothing left to gain
            settled = ~accept & (predicted <= cost_tol * cost)
            stopping = active & ok & (small | (stall >= patience) | (cost == 0) | settled)
            done = stopping & exact
            blocked = done & (since_barrier <= 5) & (cost > 0)
            diverged = diverged | newly_diverged | blocked
            converged = converged | (done & ~blocked)
            active = active & ~newly_diverged & ~done
            # elements whose Jacobian must be computed at their (new) pose before the next step
            exact = torch.where(accept, False, exact)
            if broyden:
                refresh = active & (suspect | stopping)
            else:  # a rejected element did not move: its Jacobian stands
                refresh = active & accept

            if bool(refresh.any()):
                r_new, J_new = twist_jacobian(residual_fn, pose, create_graph=differentiable, method=jacobian)
                J = torch.where(refresh[:, None, None], J_new, J)
                r = torch.where(refresh[:, None], r_new, r)
                exact = exact | refresh
                bad = refresh & ~torch.isfinite(J).flatten(1).all(-1)
                diverged = diverged | bad
                active = active & ~bad

            history.append(_entry(cost, pose, accept, lam, was_active))
            if callback is not None and callback(k, history[-1]):
                break

        diverged = diverged | (active & (since_barrier <= 5))  # out of iterations against a barrier
    return OptimizeResult(pose, cost, iterations, converged, diverged, history, residual=r, jacobian=J, exact=exact)


def _first_order(
    cost_fn, pose0, *, iters, lr_rot, lr_trans, direction_fn, cost_tol, patience, step_tol,
    bounds, max_rotation, max_translation, callback, differentiable, lr_decay=1.0,
) -> OptimizeResult:
    """Shared loop of :func:`gradient_descent` and :func:`adam`: ``T <- exp(-step^) T``."""
    _check_pose(pose0)
    B = pose0.shape[0]
    device = pose0.device
    lr = torch.tensor([lr_rot] * 3 + [lr_trans] * 3, dtype=pose0.dtype, device=device)
    pose = pose0 if differentiable else pose0.detach()
    cost, g = twist_gradient(cost_fn, pose, create_graph=differentiable)
    if not differentiable:
        cost, g = cost.detach(), g.detach()
    diverged = ~(torch.isfinite(cost) & torch.isfinite(g).all(-1))
    converged = torch.zeros(B, dtype=torch.bool, device=device)
    active = ~diverged
    iterations = torch.zeros(B, dtype=torch.long, device=device)
    stall = torch.zeros(B, dtype=torch.long, device=device)
    nan = torch.full((B,), float("nan"), dtype=pose0.dtype, device=device)
    history = [_entry(cost, pose, converged, nan, active)]
    state: dict = {}

    for k in range(1, iters + 1):
        if not bool(active.any()):
            break
        was_active = active.clone()
        step = lr * lr_decay ** (k - 1) * direction_fn(torch.where(active[:, None], g, torch.zeros_like(g)), k, state)
        trial = perturb_left(-step, pose)
        ok = _inside(trial, pose0, bounds, max_rotation, max_translation)
        cost_new, g_new = twist_gradient(cost_fn, trial, create_graph=differentiable)
        if not differentiable:
            cost_new, g_new = cost_new.detach(), g_new.detach()
        finite = torch.isfinite(cost_new) & torch.isfinite(g_new).all(-1)
        # A non-finite cost or a pose out of bounds leaves the element at its last good pose.
        keep = active & ok & finite
        newly_diverged = active & ~(ok & finite)
        rel_decrease = (cost - cost_new) / cost.abs().clamp_min(torch.finfo(cost.dtype).tiny)
        if cost_tol is not None:
            stall = torch.where(keep, torch.where(rel_decrease.abs() < cost_tol, stall + 1, 0), stall)
        rot, trans = _step_sizes(step)
        small = (rot <= step_tol[0]) & (trans <= step_tol[1])
        pose = torch.where(keep[:, None, None], trial, pose)
        cost = torch.where(keep, cost_new, cost)
        g = torch.where(keep[:, None], g_new, g)
        iterations = iterations + active.long()
        diverged = diverged | newly_diverged
        done = keep & (small | (stall >= patience))
        converged = converged | done
        active = active & ~newly_diverged & ~done
        history.append(_entry(cost, pose, keep, nan, was_active))
        if callback is not None and callback(k, history[-1]):
            break

    return OptimizeResult(pose, cost, iterations, converged, diverged, history)


def gradient_descent(
    cost_fn: Callable[[Tensor], Tensor],
    pose0: Tensor,
    *,
    iters: int,
    lr_rot: float,
    lr_trans: float,
    cost_tol: float | None = None,
    patience: int = 2,
    step_tol: tuple[float, float] = (0.0, 0.0),
    bounds: BoundsFn | None = None,
    max_rotation: float | None = None,
    max_translation: float | None = None,
    callback: Callable[[int, dict[str, Tensor]], bool | None] | None = None,
    differentiable: bool = False,
    lr_decay: float = 1.0,
) -> OptimizeResult:
    """Plain gradient descent on the left twist: ``T <- exp(-(lr * grad)^) T``.

    ``cost_fn: (B, 4, 4) -> (B,)``. ``lr_rot`` (rad per unit gradient) and ``lr_trans`` (mm per
    unit gradient) scale the rotational and translational parts separately, because radians and
    millimetres differ by the size of the anatomy. Runs ``iters`` iterations unless a step falls
    below ``step_tol`` or, with ``cost_tol``, ``patience`` steps in a row change the cost by
    less than ``cost_tol`` relative; the rates shrink by ``lr_decay`` per iteration (DiffPose-style
    schedules); stopping, divergence and history as in
    :func:`levenberg_marquardt` (``damping`` is NaN, ``accepted`` means the pose moved).
    """
    return _first_order(
        cost_fn, pose0, iters=iters, lr_rot=lr_rot, lr_trans=lr_trans,
        direction_fn=lambda g, k, state: g, cost_tol=cost_tol, patience=patience,
        step_tol=step_tol, bounds=bounds, max_rotation=max_rotation,
        max_translation=max_translation, callback=callback, differentiable=differentiable, lr_decay=lr_decay,
    )


def adam(
    cost_fn: Callable[[Tensor], Tensor],
    pose0: Tensor,
    *,
    iters: int,
    lr_rot: float = 7.5e-3,
    lr_trans: float = 7.5,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    cost_tol: float | None = None,
    patience: int = 2,
    step_tol: tuple[float, float] = (0.0, 0.0),
    bounds: BoundsFn | None = None,
    max_rotation: float | None = None,
    max_translation: float | None = None,
    callback: Callable[[int, dict[str, Tensor]], bool | None] | None = None,
    differentiable: bool = False,
    lr_decay: float = 1.0,
) -> OptimizeResult:
    """Adam on the left twist, DiffPose's optimiser (its rates are the defaults).

    The moment estimates live in twist coordinates, which mean the same at every iterate
    because increments are left (camera-frame) twists; each bias-corrected step is applied as
    ``T <- exp(-step^) T``. Arguments, stopping and history as in :func:`gradient_descent`.
    """
    b1, b2 = betas

    def direction(g: Tensor, k: int, state: dict) -> Tensor:
        m = b1 * state.get("m", torch.zeros_like(g)) + (1 - b1) * g
        v = b2 * state.get("v", torch.zeros_like(g)) + (1 - b2) * g * g
        state["m"], state["v"] = m, v
        return (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + eps)

    return _first_order(
        cost_fn, pose0, iters=iters, lr_rot=lr_rot, lr_trans=lr_trans,
        direction_fn=direction, cost_tol=cost_tol, patience=patience, step_tol=step_tol,
        bounds=bounds, max_rotation=max_rotation, max_translation=max_translation,
        callback=callback, differentiable=differentiable, lr_decay=lr_decay,
    )
