"""The depth bias of variants of the finest level's cost (benchmarks/depth_bias.py's probe): the DRRs
at the truth moved -16 .. 16 mm along the central ray are rendered once per case and scored by the
library's residual (``lib``, the finest level's), each of its four NCC terms alone, their mean without the whole-image
terms (``no_whole``), edges only, other patch sizes, high-passed images (``hpS``, a Gaussian of S px
removed) and a comparison of transmissions exp(-p) after an affine fit of the X-ray's line
integrals to the DRR's (``exp_ls``, ``exp_q``).

    python benchmarks/depth_bias_variants.py FOLDER [FOLDER ...] [--model M]

Per variant: the median |depth of the minimum|, how many beyond 2 mm, and each case's.
"""
import sys, json, statistics
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parent))
from depth_bias import minimum, SHIFTS_MM
from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar
from SphericalRegLib.register.residuals import ncc_residual, bright_outliers

torch.set_num_threads(1)

def gblur(x, s):
    r = int(3 * s) + 1
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / s) ** 2); k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))

def highpass(x, m, s):
    mf = m.to(x.dtype).expand_as(x)
    low = gblur(x * mf, s) / gblur(mf, s).clamp_min(1e-6)
    return (x - low) * mf

TERMS = ("int_local", "int_whole", "edge_local", "edge_whole")


def terms(a, b, m, patch):
    """The library's residual at ``patch`` split into its four ``1 - NCC`` costs (``0.5 |r|^2`` is their
    mean): intensities and edges, over patches and over the whole image."""
    H, W = a.shape[-2:]
    hw = (H // patch) * patch * (W // patch) * patch
    r = ncc_residual(patch, "difference")(a, b, m)
    return {name: 2 * part.pow(2).sum(-1) for name, part in zip(TERMS, r.split([hw, H * W, 2 * hw, 2 * H * W], -1))}

def variants(x, drr, valid, level):
    t = terms(x, drr, valid, level.patch)
    v = {"lib": sum(t.values()) / 4, **t}
    v["no_whole"] = (t["int_local"] + t["edge_local"]) / 2
    v["edges"] = (t["edge_local"] + t["edge_whole"]) / 2
    for p in (8, 32):
        v[f"lib_p{p}"] = sum(terms(x, drr, valid, p).values()) / 4
    for s in (2, 4, 8):
        xa, da = highpass(x, valid, s), highpass(drr, valid, s)
        v[f"hp{s}"] = sum(terms(xa, da, valid, level.patch).values()) / 4
    for fit in ("ls", "q"):
        xe, de = to_transmission(x, drr, valid, fit)
        t4 = terms(xe, de, valid, level.patch)
        v[f"exp_{fit}"] = sum(t4.values()) / 4
        v[f"exp_{fit}_nowhole"] = (t4["int_local"] + t4["edge_local"]) / 2
    return v

def to_transmission(x, drr, valid, fit):
    """X-ray line integrals mapped onto the DRR's scale by an affine fit, both as exp(-p)."""
    B = x.shape[0]
    v = valid.expand(B, 1, *x.shape[-2:]).flatten(1)
    out = []
    for k in range(B):
        xs, ds = x[k].flatten()[v[k]].double(), drr[k].flatten()[v[k]].double()
        if fit == "ls":
            A = torch.stack([ds, torch.ones_like(ds)], 1)
            sol = torch.linalg.lstsq(A, xs[:, None]).solution[:, 0]
            a, b = float(sol[0]), float(sol[1])
        else:
            q = torch.tensor([0.1, 0.5], dtype=torch.float64)
            qx, qd = torch.quantile(xs, q), torch.quantile(ds, q)
            a = float((qx[1] - qx[0]) / (qd[1] - qd[0])); b = float(qx[0] - a * qd[0])
        out.append(torch.exp(-(x[k] - b) / a))
    return torch.stack(out), torch.exp(-drr)

MODEL = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "Resources/Models/chest_example.pt"
FOLDERS = [a for i, a in enumerate(sys.argv[1:], 1) if a != "--model" and sys.argv[i - 1] != "--model"]
registrar = None
for folder in map(Path, FOLDERS):
    rows = {}
    for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        case = read_case(case_dir); truth, _ = read_truth(case_dir)
        registrar = registrar or Registrar(load_model(MODEL, case.ct), case.ct)
        ctx = registrar.context(case.xray, case.camera, photometric=case.reading["photometric"])
        level = registrar.options.refine_levels[-1]
        x, cam, valid = ctx.xray_level(0, level.image_size)
        mu = ctx.attenuation[level.spacing_mm]; render = ctx.renderer(cam, mu)
        twist = torch.zeros(len(SHIFTS_MM), 6, dtype=torch.float64); twist[:, 5] = SHIFTS_MM
        poses = perturb_left(twist, truth.to(torch.float64).expand(len(SHIFTS_MM), 4, 4))
        with torch.no_grad():
            drr = render(mu.data, poses)
            xs = x.expand(len(poses), -1, -1, -1)
            vm = valid.to(x.device)[None, None] & ~bright_outliers(xs, drr, valid[None, None])
            for k, c in variants(xs, drr, vm, level).items():
                rows.setdefault(k, []).append(minimum(c))
    print(f"## {folder}")
    for k, f in rows.items():
        print(f"{k:12s} med|b| {statistics.median(abs(a) for a in f):5.2f} >2mm {sum(abs(a)>2 for a in f):2d}/{len(f)}  " + " ".join(f"{a:+5.1f}" for a in f), flush=True)
