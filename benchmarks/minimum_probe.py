"""Where the learnt similarity's minimum lies for a case's X-ray and for the X-ray training would
have rendered at the same true pose: a gap between the two is the X-ray's path into the networks
(reading, warping into the model's camera, the field it saw), not what the network learnt.

    python benchmarks/minimum_probe.py MODEL.pt CASE [--steps 41]

Prints both X-rays' statistics in the model's camera (the share of pixels the case's detector did
not see, their correlation, a linear fit of one on the other) and the argmin of the learnt cost
along each of the six axes through the truth for each (degrees, mm), and the regressor's error on each.
"""

from __future__ import annotations

import argparse

import torch

from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.landscape import twist_profiles
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar
from SphericalRegLib.register.stages import learnt_residual
from SphericalRegLib.training import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("case")
    parser.add_argument("--steps", type=int, default=41)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = read_case(args.case)
    truth, _ = read_truth(args.case)
    trainer = Trainer.of_model(args.model, case.ct)
    for module in trainer.networks.values():
        module.eval()
    sim = trainer.similarity
    with torch.no_grad():
        features = trainer.feature_volume()
        rendered = trainer.simulate(truth[None].to(trainer.device), torch.ones(1, dtype=torch.float64))
        z_rendered = sim.embed_xray(rendered)

    def as_trained(T):
        drr = trainer.renderer(features, T)
        return 0.5 * sim.residual(z_rendered.expand(len(T), *z_rendered.shape[1:]), sim.embed_drr(drr)).pow(2).sum(-1)

    registrar = Registrar(load_model(args.model, case.ct), case.ct)
    ctx = registrar.context(case.xray, case.camera, photometric=case.reading["photometric"])
    learnt = learnt_residual(ctx)
    x, _, valid = ctx.pyramids[0].in_camera(registrar.model.camera)
    a, b = rendered[0, 0].double().flatten(), x[0, 0].double().flatten()
    inside = valid.flatten()
    fit = torch.linalg.lstsq(torch.stack([a[inside], torch.ones_like(a[inside])], 1), b[inside, None]).solution.flatten()
    print(f"model camera {registrar.model.camera.image_size} px of {registrar.model.camera.pixel_spacing[0]:.2f} mm; "
          f"case detector {case.camera.image_size} px of {case.camera.pixel_spacing[0]:.2f} mm")
    print(f"pixels the case's detector did not see: {int((~valid).sum())} of {valid.numel()}; correlation with the "
          f"rendered X-ray {float(torch.corrcoef(torch.stack([a, b]))[0, 1]):.3f} (inside the field "
          f"{float(torch.corrcoef(torch.stack([a[inside], b[inside]]))[0, 1]):.3f}); "
          f"case = {float(fit[0]):.3f} * rendered + {float(fit[1]):.3f}")
    with torch.no_grad():
        for name, image in (("rendered as in training", rendered), ("case X-ray", x)):
            rot, iso = trainer._regressor_errors(trainer.regressor(image.float()).double(), truth[None].double())
            print(f"regressor on the {name}: {float(rot[0]):.2f} deg, isocentre {float(iso[0]):.1f} mm")
    costs = {"case X-ray": lambda T: 0.5 * learnt(T).pow(2).sum(-1), "rendered as in training": as_trained}
    profiles = twist_profiles(costs, truth, case.camera.sdd, 15.0, 40.0, args.steps)
    for name, axes in profiles.summary().items():
        print(f"{name}: argmin " + ", ".join(f"{axis} {v['argmin']:g}" for axis, v in axes.items()))


if __name__ == "__main__":
    main()
