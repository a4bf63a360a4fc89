"""The learnt similarity: X-ray and DRR token embeddings on a hypersphere and their geodesic distances.

A CNN-Transformer (timm's MobileViT-XXS, randomly initialised) embeds each image as a set of N
tokens (an adaptive grid over its last feature map). Each token is projected to a tangent vector
``v`` in R^D and mapped into the embedding space by a Riemannian exponential map:

* ``"sphere"``: ``exp`` at the north pole ``n = e_{D+1}`` of S^D, ``z = cos|v| n + sin|v| v/|v|``;
  distance ``2 atan2(|a - b|, |a + b|)``, the great-circle angle in [0, pi] (stable at 0 and pi).
* ``"euclidean"``: ``z = v``; distance ``|a - b|``.
* ``"hyperbolic"``: Poincare ball (curvature -1), ``exp`` at 0, ``z = tanh|v| v/|v|``; distance
  ``2 asinh(|a - b| / sqrt((1 - |a|^2)(1 - |b|^2)))`` (= arcosh of the usual form, stable at 0).

The per-token distances form the residual vector ``r`` (B, N) the Levenberg-Marquardt optimiser
needs; the cost is ``0.5 * sum(r**2)``.

Design choices: separate stems for the X-ray (1 channel) and the DRR (C feature channels) feed one
shared trunk; every image is standardised per channel inside, so the absolute scale of line
integrals does not matter; the trunk uses GroupNorm (one group) instead of BatchNorm, so samples in
a batch never influence each other's pose gradients and train and eval modes agree; timm's fused
attention is switched off because its CPU kernel has no double backward.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError
from .intensity import standardise

__all__ = ["SPACES", "SimilarityNet", "token_distance", "exp_map"]

SPACES = ("sphere", "euclidean", "hyperbolic")

_BALL_EDGE = 1 - 1e-5


def _norm(x: Tensor) -> Tensor:
    """Euclidean norm over the last axis, exactly 0 at 0 with gradient 0 there (not NaN)."""
    sq = (x * x).sum(-1)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def _ratio(f, theta: Tensor) -> Tensor:
    """``f(theta) / theta``, with its limit 1 at 0 (for f = sin, tanh)."""
    positive = theta > 0
    safe = torch.where(positive, theta, torch.ones_like(theta))
    return torch.where(positive, f(safe) / safe, torch.ones_like(theta))


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise InputError("space", f"is {space!r}", f"one of {', '.join(SPACES)}")


def exp_map(v: Tensor, space: str) -> Tensor:
    """Tangent vectors ``(..., D)`` at the base point to points of ``space``.

    Returns ``(..., D + 1)`` unit vectors for the sphere, ``(..., D)`` otherwise.
    """
    _check_space(space)
    if space == "euclidean":
        return v
    theta = _norm(v)[..., None]
    if space == "sphere":
        return torch.cat([_ratio(torch.sin, theta) * v, torch.cos(theta)], dim=-1)
    return _ratio(lambda t: torch.tanh(t).clamp(max=_BALL_EDGE), theta) * v


def token_distance(a: Tensor, b: Tensor, space: str) -> Tensor:
    """Geodesic distance between matching points ``(..., N, E), (..., N, E) -> (..., N)``."""
    _check_space(space)
    diff = _norm(a - b)
    if space == "euclidean":
        return diff
    if space == "sphere":
        return 2 * torch.atan2(diff, _norm(a + b))
    a2 = (a * a).sum(-1).clamp(max=_BALL_EDGE**2)
    b2 = (b * b).sum(-1).clamp(max=_BALL_EDGE**2)
    return 2 * torch.asinh(diff / ((1 - a2) * (1 - b2)).sqrt())


def _stem(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, 3, padding=1), nn.GroupNorm(1, out_chans), nn.SiLU())


def _tie(stem_drr: nn.Sequential, stem_xray: nn.Sequential) -> None:
    """Start the DRR stem as the X-ray stem on channel 0 (mu), blind to the learnt channels."""
    with torch.no_grad():
        stem_drr[0].weight.zero_()
        stem_drr[0].weight[:, :1] = stem_xray[0].weight
        stem_drr[0].bias.copy_(stem_xray[0].bias)
        stem_drr[1].load_state_dict(stem_xray[1].state_dict())


class SimilarityNet(nn.Module):
    """X-ray and DRR token embeddings ``(B, N, E)`` and their per-token distances ``(B, N)``.

    ``drr_channels``: C, the feature channels rendered into the DRR. ``space``: one of
    :data:`SPACES`. ``embed_dim``: D, the tangent dimension (E = D + 1 on the sphere).
    ``tokens``: N, a square number: an adaptive grid of cells over the trunk's last feature map,
    at most as fine as that map, times ``N / cells`` heads per cell, each head its own point in the
    space. Pooling a 2 x 2 map (64 px through MobileViT's stride 32) onto 4 x 4 cells would only
    repeat each distance four times, and LM would see a Jacobian of rank 4 at most; heads keep
    the N residuals distinct. Inputs of another size than ``image_size`` are resized to it.

    ``token_stage``: the trunk stage whose feature map gives the tokens (MobileViT-XXS: 2 is stride
    8, the first stage with a transformer block); the later stages are dropped. None keeps the
    whole trunk (stride 32: a 2 x 2 map at 64 px, i.e. an almost global embedding whose pose
    gradient is hard to learn, docs/learnability.md). Tokens from a finer map compare the images
    region by region, which is what an image cost's gradient does.
    """

    def __init__(self, drr_channels: int, space: str = "sphere", embed_dim: int = 32,
                 image_size: int = 128, tokens: int = 16, trunk: str = "mobilevit_xxs",
                 stem_channels: int = 8, tied_stems: bool = False, token_stage: int | None = None):
        super().__init__()
        _check_space(space)
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise InputError("tokens", f"is {tokens}", "a square number (4, 9, 16, ...)")
        self.drr_channels = drr_channels
        self.space = space
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.tokens = tokens
        self.stem_xray = _stem(1, stem_channels)
        self.stem_drr = _stem(drr_channels, stem_channels)
        if tied_stems:
            self.tie_stems()
        self.trunk = timm.create_model(trunk, pretrained=False, in_chans=stem_channels, num_classes=0,
                                       global_pool="", norm_layer="groupnorm1")
        self.token_stage = token_stage
        if token_stage is not None:
            stages = len(self.trunk.stages)
            if not 0 <= token_stage < stages:
                raise InputError("token_stage", f"is {token_stage}", f"a stage of {trunk}: 0 to {stages - 1}, or None")
            self.trunk.stages = self.trunk.stages[: token_stage + 1]
            self.trunk.final_conv = nn.Identity()
        for module in self.trunk.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        with torch.no_grad():
            fmap = self.trunk.forward_features(torch.zeros(1, stem_channels, image_size, image_size))
        width, fmap_side = fmap.shape[1], fmap.shape[-1]
        self.grid = min(side, fmap_side)
        self.heads = tokens // (self.grid * self.grid)
        if self.heads * self.grid * self.grid != tokens:
            raise InputError("tokens", f"is {tokens} on a {self.grid} x {self.grid} feature map",
                             f"a multiple of {self.grid * self.grid}")
        self.token_norm = nn.LayerNorm(width)
        self.project = nn.Linear(width, self.heads * embed_dim)
        # |v| ~ 1 at initialisation: inside the sphere's injectivity radius and away from the ball's edge.
        nn.init.normal_(self.project.weight, std=1 / math.sqrt(width * embed_dim))
        nn.init.zeros_(self.project.bias)

    def tie_stems(self) -> None:
        """Initialise the DRR stem as a copy of the X-ray stem on the DRR's mu channel: the shared
        trunk then starts as a comparison of like images, with S = 0 at the truth for a clean
        X-ray, instead of two unrelated encoders (docs/learnability.md: 42% of 1-DOF gradients
        within 30 deg at initialisation against 14%)."""
        _tie(self.stem_drr, self.stem_xray)

    def _prepare(self, img: Tensor, channels: int, name: str) -> Tensor:
        if img.dim() != 4 or img.shape[1] != channels:
            raise InputError(name, f"has shape {tuple(img.shape)}", f"(B, {channels}, H, W)")
        img = img.to(self.project.weight.dtype)
        if img.shape[-2:] != (self.image_size, self.image_size):
            img = F.interpolate(img, size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False)
        return standardise(img, (-2, -1))  # per image and channel

    def _embed(self, stemmed: Tensor) -> Tensor:
        fmap = F.adaptive_avg_pool2d(self.trunk.forward_features(stemmed), self.grid)
        v = self.project(self.token_norm(fmap.flatten(2).transpose(1, 2)))  # (B, cells, heads * D)
        return exp_map(v.reshape(len(v), self.tokens, self.embed_dim), self.space)

    def embed_xray(self, x: Tensor) -> Tensor:
        """X-ray line integrals ``(B, 1, H, W) -> (B, N, E)``."""
        return self._embed(self.stem_xray(self._prepare(x, 1, "xray")))

    def embed_drr(self, d: Tensor) -> Tensor:
        """Rendered feature DRR ``(B, C, H, W) -> (B, N, E)``."""
        return self._embed(self.stem_drr(self._prepare(d, self.drr_channels, "drr")))

    def residual(self, zx: Tensor, zd: Tensor) -> Tensor:
        """Per-token geodesic distances ``(B, N, E), (B, N, E) -> (B, N)``, non-negative."""
        return token_distance(zx, zd, self.space)

    def forward(self, x: Tensor, d: Tensor) -> Tensor:
        """``x (B, 1, H, W)``, ``d (B, C, H, W)`` -> residual ``(B, N)``; one trunk pass for both.

        An X-ray batch of one is compared with every DRR. Equals
        ``residual(embed_xray(x), embed_drr(d))``; the optimiser embeds the X-ray once that way.
        """
        sx = self.stem_xray(self._prepare(x, 1, "xray"))
        sd = self.stem_drr(self._prepare(d, self.drr_channels, "drr"))
        zx, zd = self._embed(torch.cat([sx, sd])).split([len(sx), len(sd)])
        return self.residual(zx, zd)
