"""A family of X-ray physics for simulated frames: spectra, scatter, noise, detector, processing, instruments.

:func:`simulate_frame` turns a CT (HU) and a pose into the pixel values of one exported X-ray
under a :class:`Physics`. Every effect has an "off" value; ``PRESETS["plain"]`` is exactly the
physics ``simulate.simulate_case`` always had (Siddon line integrals of ``hu_to_mu`` at full CT
resolution, Beer-Lambert, 5% scatter blurred by 40 mm, Poisson noise at 10,000 photons, gain 5,
offset 100, 16-bit counts) and gives the same frame bit for bit for the same generator state.
docs/physics.md describes every effect with the source of its numbers.

The order of one frame, as the X-rays travel:

1. material path lengths: the CT decomposed by HU into soft tissue, cortical bone and metal
   (in "reference attenuation" units: the line integral each material contributes at 60 keV,
   where ``hu_to_mu`` holds), all from one Siddon pass of DiffDRR with the HU bins as channels;
2. the table and the instruments that are not in the CT (pedicle screws, K-wires, retractors), as
   path lengths of carbon fibre, titanium or steel added to those of the CT; the body continuing
   past the CT's end where rays miss the CT (``truncation``);
3. a polychromatic spectrum (Kramers' law, aluminium filtration, energy-integrating detector)
   integrated over energy with NIST mass attenuation coefficients, or Beer-Lambert at 60 keV;
4. the heel effect, collimator shutters (rectangular blades, or an iris), the scatter those
   leave (a Gaussian blur of the primary), the anti-scatter grid's lines, image-intensifier
   pincushion and S distortion and vignetting;
5. quantum (Poisson) noise at a dose, detector blur, gain non-uniformity, electronic noise, gain
   and offset, defective pixels, 16-bit clipping (saturation);
6. the system's image processing before export: a log, linear or S-shaped LUT, windowing, edge
   enhancement (unsharp mask), gamma, optional inversion, 8/12/16-bit quantisation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .camera import ISOCENTRE_FRACTION, Camera
from .distortion import distort
from .errors import InputError
from .volume import MU_WATER, Volume, hu_to_mu

__all__ = ["Physics", "PRESETS", "EFFECTS", "RANDOM", "physics_for", "physics_names", "prepare", "simulate_frame", "Prepared",
           "draw_instruments", "crop_ct", "mass_attenuation", "spectrum", "MATERIALS", "REFERENCE_KEV"]

# -- defaults of simulate.simulate_case (kept here so that simulate.py can import them unchanged)
PHOTONS = 10_000.0
SCATTER_FRACTION = 0.05
SCATTER_SIGMA_MM = 40.0
GAIN, OFFSET = 5.0, 100.0

# -- attenuation data

ENERGIES_KEV = (10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0)
MASS_ATTENUATION = {
    # mu/rho in cm^2/g, total with coherent scattering, from the NIST tables of Hubbell & Seltzer
    # (NIST Standard Reference Database 126, NISTIR 5632; the same data as XCOM): Table 4 for water
    # (liquid) and cortical bone (ICRU-44), Table 3 for Al (Z = 13), Ti (22) and Fe (26). No
    # absorption edge of these materials lies between 10 and 150 keV.
    "water": (5.329, 1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505),
    "bone": (28.51, 9.032, 4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480),
    "aluminium": (26.23, 7.955, 3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378),
    "titanium": (110.7, 35.87, 15.85, 4.972, 2.214, 1.213, 0.7661, 0.4052, 0.2721, 0.1649),
    "iron": (170.6, 57.08, 25.68, 8.176, 3.629, 1.958, 1.205, 0.5952, 0.3717, 0.1964),
}
DENSITY = {"water": 1.0, "bone": 1.92, "aluminium": 2.699, "titanium": 4.54, "iron": 7.874}
"""g/cm^3, the densities NIST uses (cortical bone ICRU-44: 1.92)."""
MATERIALS = ("soft", "bone", "titanium", "iron")
"""The path-length channels: soft tissue (water), cortical bone, titanium (screws), iron (steel)."""
_TABLE_OF = {"soft": "water", "bone": "bone", "titanium": "titanium", "iron": "iron"}
REFERENCE_KEV = 60.0
"""The energy at which ``volume.hu_to_mu`` holds: water 0.2059 cm^2/g there, MU_WATER = 0.02/mm."""
BONE_HU = 2000.0
"""HU of cortical bone in the water/bone mixture model: hu_to_mu(2000) = 0.06/mm, and NIST's
cortical bone at 60 keV is 1.92 g/cm^3 x 0.3148 cm^2/g = 0.0604/mm."""
BONE_START_HU, METAL_HU, BIN_HU = 100.0, 2500.0, 100.0
"""Voxels below BONE_START_HU are soft tissue, from METAL_HU up metal; bone mixtures in BIN_HU bins."""
MAGNIFICATION = 1.0 / ISOCENTRE_FRACTION
"""Objects at the isocentre appear this much larger on the detector."""


def mass_attenuation(material: str, energy_kev: Tensor) -> Tensor:
    """mu/rho (cm^2/g) of a NIST material at energies (keV, 10-150), log-log interpolated."""
    table = torch.tensor(MASS_ATTENUATION[_TABLE_OF.get(material, material)], dtype=torch.float64)
    e = torch.as_tensor(energy_kev, dtype=torch.float64).clamp(ENERGIES_KEV[0], ENERGIES_KEV[-1])
    x = torch.log(torch.tensor(ENERGIES_KEV, dtype=torch.float64))
    le = torch.log(e)
    i = torch.searchsorted(x, le.contiguous()).clamp(1, len(ENERGIES_KEV) - 1)
    t = (le - x[i - 1]) / (x[i] - x[i - 1])
    return torch.exp(torch.log(table[i - 1]) * (1 - t) + torch.log(table[i]) * t)


def reference_mu(material: str) -> float:
    """Linear attenuation (1/mm) at REFERENCE_KEV as ``hu_to_mu`` sees it (soft tissue: MU_WATER)."""
    if material == "soft":
        return MU_WATER
    name = _TABLE_OF[material]
    return DENSITY[name] * float(mass_attenuation(name, torch.tensor(REFERENCE_KEV))) / 10.0


def spectrum(kvp: float, filtration_mm_al: float, step_kev: float = 1.0) -> tuple[Tensor, Tensor]:
    """Energies (keV) and normalised weights of the detected signal of a tungsten tube.

    Kramers' law for the photons per keV, ``N(E) ~ (kVp - E) / E``, hardened by ``filtration_mm_al``
    of aluminium (inherent plus added), weighted by E for an energy-integrating detector
    (CsI, assumed to absorb every photon). Bins of ``step_kev`` from 10 keV to the kVp.
    """
    E = torch.arange(10.0 + step_kev / 2, float(kvp), step_kev, dtype=torch.float64)
    if E.numel() == 0:
        raise InputError("kvp", f"is {kvp}", "above 12 kVp")
    N = (kvp - E) / E
    N = N * torch.exp(-mass_attenuation("aluminium", E) * DENSITY["aluminium"] * filtration_mm_al / 10.0)
    w = N * E
    return E, w / w.sum()


# -- the physics


@dataclass(frozen=True)
class Physics:
    """One X-ray system's physics; every field's "off" value is in brackets. Ranges of ``random``
    are in :data:`RANDOM`, sources in docs/physics.md.

    Spectrum: ``kvp`` tube voltage [None: monochromatic Beer-Lambert at 60 keV, today's model];
    ``filtration_mm_al`` total filtration; ``ct_metal`` what the CT's metal voxels (>= 2500 HU) are,
    "titanium" or "iron". Scatter: ``scatter_fraction`` scatter added as that share of the primary
    blurred by a Gaussian of ``scatter_sigma_mm`` (the scatter-to-primary ratio in open field; behind
    the body it is larger) [0]; ``scatter_model`` "blur" (of the primary, the old model) or
    "thickness" (of the primary times its line integral: scatter arises where the beam is attenuated,
    none from open field; scaled so that ``scatter_fraction`` is the share behind one mean free path). Dose: ``photons`` per pixel in air; ``quantum_noise`` Poisson
    [False: the expected value]; ``read_noise`` electronic noise, counts sd [0]. Detector: ``gain``
    counts per photon, ``offset`` dark counts; ``blur_mm`` Gaussian sd of the detector's and focal
    spot's blur [0]; ``gain_variation`` per-pixel sd left after flat-field correction [0];
    ``defect_fraction`` share of dead (offset) or hot (saturated) pixels [0]; ``defect_lines`` dead
    rows or columns [0]. Source: ``heel`` intensity difference across the field along the
    anode-cathode axis [0]. Grid: ``grid_depth`` modulation of the grid's (aliased) lines [0] of
    ``grid_period_px``. Field: ``shutters`` largest share of each side covered by a collimator
    blade [0], ``shutter_transmission`` the blades' [any]; ``iris`` radius of a circular field as a
    share of half the shorter side [0]; ``truncation`` how much of the attenuation at the CT's edge
    continues where rays miss the CT [0]. Instruments: ``screws`` (titanium pedicle screws, placed
    in pairs), ``kwires`` (steel), ``retractors`` (steel blades) [0 each]; ``table`` a carbon-fibre
    table with steel rails under the patient [False]. Image intensifier: ``pincushion`` radial
    distortion at the corners, ``s_distortion`` rotation (rad) at the corners, ``vignetting``
    brightness lost at the corners [0 each]. Processing: ``mapping`` "none" (raw counts exported),
    "linear", "log" or "sigmoid"; ``window`` the quantiles of the exposed field mapped to black and
    white; ``gamma`` [1]; ``unsharp_amount`` [0] and ``unsharp_sigma_mm``; ``invert`` bone bright
    [False]; ``bits`` of the export (8, 10, 12 or 16; raw counts are always 16).
    """

    kvp: float | None = None
    filtration_mm_al: float = 2.5
    ct_metal: str = "titanium"
    scatter_fraction: float = SCATTER_FRACTION
    scatter_sigma_mm: float = SCATTER_SIGMA_MM
    scatter_model: str = "blur"
    photons: float = PHOTONS
    quantum_noise: bool = True
    read_noise: float = 0.0
    gain: float = GAIN
    offset: float = OFFSET
    blur_mm: float = 0.0
    gain_variation: float = 0.0
    defect_fraction: float = 0.0
    defect_lines: int = 0
    heel: float = 0.0
    grid_depth: float = 0.0
    grid_period_px: float = 4.0
    shutters: float = 0.0
    shutter_transmission: float = 0.02
    iris: float = 0.0
    truncation: float = 0.0
    screws: int = 0
    kwires: int = 0
    retractors: int = 0
    table: bool = False
    pincushion: float = 0.0
    s_distortion: float = 0.0
    vignetting: float = 0.0
    mapping: str = "none"
    window: tuple = (0.0, 1.0)
    gamma: float = 1.0
    unsharp_amount: float = 0.0
    unsharp_sigma_mm: float = 8.0
    invert: bool = False
    bits: int = 16

    def __post_init__(self):
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        checks = [
            ("kvp", self.kvp is None or 20 <= self.kvp <= 150, "None or 20-150 kVp"),
            ("ct_metal", self.ct_metal in ("titanium", "iron"), "titanium or iron"),
            ("scatter_model", self.scatter_model in ("blur", "thickness"), "blur or thickness"),
            ("mapping", self.mapping in ("none", "linear", "log", "sigmoid"), "none, linear, log or sigmoid"),
            ("bits", self.bits in (8, 10, 12, 16) and (self.mapping != "none" or self.bits == 16),
             "8, 10, 12 or 16, and 16 for raw counts (mapping none)"),
            ("photons", self.photons > 0, "a positive number of photons"),
            ("window", len(self.window) == 2 and 0 <= self.window[0] < self.window[1] <= 1,
             "two quantiles 0 <= low < high <= 1"),
            ("shutters", 0 <= self.shutters < 0.5, "0 to 0.5"),
            ("iris", 0 <= self.iris <= 1.5, "0 (off) to 1.5"),
            ("gamma", self.gamma > 0, "positive"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(name, f"is {getattr(self, name)!r}", expected)

    def to_json(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Physics":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError("physics", f"has unknown fields {unknown}", ", ".join(sorted(known)))
        return cls(**d)


PLAIN = Physics()

EFFECT_PRESETS = {
    # each effect alone: plain with that one effect switched on (or, for scatter and noise, which
    # plain has mildly, turned up)
    "spectrum": replace(PLAIN, kvp=70.0, filtration_mm_al=3.0),
    "scatter": replace(PLAIN, scatter_fraction=1.0, scatter_sigma_mm=60.0, scatter_model="thickness"),
    "noise": replace(PLAIN, photons=300.0, gain=150.0, read_noise=20.0),
    "blur": replace(PLAIN, blur_mm=2.0),
    "detector": replace(PLAIN, gain_variation=0.02, defect_fraction=1e-3, defect_lines=2, offset=800.0),
    "heel": replace(PLAIN, heel=0.3),
    "grid": replace(PLAIN, grid_depth=0.08, grid_period_px=5.3),
    "processing": replace(PLAIN, mapping="log", window=(0.01, 0.99), gamma=0.8, unsharp_amount=1.0,
                          unsharp_sigma_mm=8.0, bits=8),
    "shutters": replace(PLAIN, shutters=0.25),
    "truncation": replace(PLAIN, truncation=1.0),
    "instruments": replace(PLAIN, screws=4, kwires=2, retractors=1, table=True),
    "distortion": replace(PLAIN, pincushion=0.08, s_distortion=0.04, vignetting=0.25),
}
EFFECTS = tuple(EFFECT_PRESETS)
"""The single-effect presets, for the "each effect alone" benchmark."""

PRESETS: dict[str, Physics] = {
    "plain": PLAIN,
    # a modern mobile flat-panel C-arm: 80 kVp, grid, mild scatter, log processing, 16-bit export
    "flat-panel": replace(PLAIN, kvp=80.0, filtration_mm_al=4.0, scatter_fraction=0.3, scatter_sigma_mm=60.0,
                          photons=3000.0, gain=15.0, read_noise=5.0, blur_mm=0.6, gain_variation=0.005,
                          defect_fraction=2e-4, heel=0.1, grid_depth=0.03, grid_period_px=4.7, shutters=0.1,
                          mapping="log", window=(0.005, 0.995), unsharp_amount=0.5, unsharp_sigma_mm=6.0),
    # an image-intensifier C-arm: round field, pincushion and S distortion, vignetting, more blur, 8-bit video
    "image-intensifier": replace(PLAIN, kvp=75.0, filtration_mm_al=3.0, scatter_fraction=0.4, scatter_sigma_mm=50.0,
                                 photons=1500.0, gain=30.0, read_noise=10.0, blur_mm=1.5, heel=0.1, iris=1.0,
                                 pincushion=0.08, s_distortion=0.03, vignetting=0.3, mapping="linear",
                                 window=(0.01, 0.99), gamma=0.7, bits=8),
    # a mobile C-arm in theatre: higher kVp, no grid (more scatter), table and instruments, S-curve LUT, 8 bits
    "mobile-c-arm": replace(PLAIN, kvp=95.0, filtration_mm_al=5.0, scatter_fraction=0.8, scatter_sigma_mm=80.0,
                            scatter_model="thickness",
                            photons=1000.0, gain=40.0, read_noise=8.0, blur_mm=1.0, gain_variation=0.01,
                            defect_fraction=5e-4, heel=0.15, shutters=0.2, table=True, screws=2, kwires=1,
                            mapping="sigmoid", window=(0.01, 0.99), unsharp_amount=0.8, unsharp_sigma_mm=10.0,
                            bits=8),
    # plain physics exported as a processed, bone-bright 8-bit image (a PACS export or a screenshot)
    "processed-8bit": replace(PLAIN, mapping="log", window=(0.02, 0.98), gamma=1.3, unsharp_amount=1.5,
                              unsharp_sigma_mm=5.0, invert=True, bits=8),
    "instruments": EFFECT_PRESETS["instruments"],
    "low-dose": replace(PLAIN, photons=150.0, gain=300.0, read_noise=30.0),
    # everything on at once, strongly
    "hard": replace(PLAIN, kvp=110.0, filtration_mm_al=6.0, scatter_fraction=1.5, scatter_sigma_mm=100.0,
                    photons=300.0, gain=150.0, read_noise=20.0, blur_mm=1.5, gain_variation=0.02,
                    defect_fraction=1e-3, defect_lines=1, offset=500.0, heel=0.25, grid_depth=0.06,
                    grid_period_px=3.3, shutters=0.25, truncation=1.0, screws=6, kwires=2, retractors=2,
                    table=True, pincushion=0.05, s_distortion=0.02, vignetting=0.2, mapping="sigmoid",
                    window=(0.02, 0.98), gamma=1.2, unsharp_amount=1.5, unsharp_sigma_mm=8.0, bits=8),
}
for _name, _physics in EFFECT_PRESETS.items():
    PRESETS.setdefault(_name, _physics)

RANDOM = {
    # field: (kind, low, high[, probability the effect is on]); "log" draws log-uniformly, "int" an
    # integer in [low, high], "coin" True with probability low, "choice" one of the listed values.
    # An effect with a probability is at its off value otherwise.
    "kvp": ("uniform", 60.0, 125.0),
    "filtration_mm_al": ("uniform", 2.5, 8.0),
    "ct_metal": ("choice", ("titanium", "iron")),
    "scatter_fraction": ("log", 0.01, 1.5),
    "scatter_sigma_mm": ("uniform", 10.0, 120.0),
    "photons": ("log", 100.0, 30000.0),
    "read_noise": ("uniform", 0.0, 20.0),
    "air_counts": ("uniform", 8000.0, 80000.0),  # gain = (air_counts - offset) / photons: air can saturate
    "offset": ("uniform", 0.0, 1000.0),
    "blur_mm": ("uniform", 0.0, 2.0),
    "gain_variation": ("uniform", 0.0, 0.03),
    "defect_fraction": ("log", 1e-5, 2e-3, 0.5),
    "defect_lines": ("int", 0, 2, 0.2),
    "heel": ("uniform", 0.0, 0.3),
    "grid_depth": ("uniform", 0.01, 0.1, 0.5),
    "grid_period_px": ("uniform", 2.2, 12.0),
    "shutters": ("uniform", 0.05, 0.3, 0.5),
    "iris": ("uniform", 0.9, 1.1, 0.2),
    "truncation": ("uniform", 0.5, 1.0, 0.5),
    "screws": ("int", 1, 8, 0.4),
    "kwires": ("int", 1, 3, 0.3),
    "retractors": ("int", 1, 2, 0.2),
    "table": ("coin", 0.5),
    "pincushion": ("uniform", 0.0, 0.1, 0.3),
    "s_distortion": ("uniform", 0.0, 0.05, 0.3),
    "vignetting": ("uniform", 0.0, 0.3, 0.3),
    "mapping": ("choice", ("none", "linear", "log", "sigmoid")),
    "window_low": ("uniform", 0.0, 0.03),
    "window_high": ("uniform", 0.97, 1.0),
    "gamma": ("log", 0.6, 1.6),
    "unsharp_amount": ("uniform", 0.2, 2.0, 0.5),
    "unsharp_sigma_mm": ("uniform", 2.0, 15.0),
    "invert": ("coin", 0.3),
    "bits": ("choice", (8, 12, 16)),
    "scatter_model": ("choice", ("blur", "thickness")),
}
"""The ranges ``physics_for("random", ...)`` draws from (docs/physics.md gives their sources)."""


def _draw(spec, g: torch.Generator):
    u = float(torch.rand((), generator=g, dtype=torch.float64))
    kind = spec[0]
    if kind == "choice":
        return spec[1][min(int(u * len(spec[1])), len(spec[1]) - 1)]
    if kind == "coin":
        return u < spec[1]
    low, high = spec[1], spec[2]
    if kind == "log":
        return math.exp(math.log(low) + (math.log(high) - math.log(low)) * u)
    if kind == "int":
        return int(low + min(int(u * (high - low + 1)), high - low))
    return low + (high - low) * u


def _random_physics(g: torch.Generator) -> Physics:
    v = {}
    for name, spec in RANDOM.items():  # always draw everything, in order: reproducible per seed
        value = _draw(spec, g)
        on = True
        if spec[0] in ("uniform", "log", "int") and len(spec) == 4:
            on = float(torch.rand((), generator=g, dtype=torch.float64)) < spec[3]
        v[name] = value if on else None
    off = {f.name: f.default for f in fields(Physics)}
    kw = {k: (val if val is not None else off.get(k)) for k, val in v.items() if k in off}
    kw["gain"] = (v["air_counts"] - v["offset"]) / v["photons"]
    kw["window"] = (v["window_low"], v["window_high"])
    if v["mapping"] == "none":
        kw.update(bits=16, invert=False, gamma=1.0, unsharp_amount=0.0, window=(0.0, 1.0))
    return Physics(**kw)


def physics_for(name: str, generator: torch.Generator) -> Physics:
    """The preset ``name``, or for "random" one drawn from :data:`RANDOM` with ``generator``."""
    if name == "random":
        return _random_physics(generator)
    if name not in PRESETS:
        raise InputError("physics", f"is {name!r}", "one of " + ", ".join([*PRESETS, "random"]))
    return PRESETS[name]


def physics_names(text: str, source: str = "physics") -> list[str]:
    """The presets (or ``random``) named in the comma-separated ``text``, checked before any work."""
    names = [name.strip() for name in text.split(",")]
    if not all(name in (*PRESETS, "random") for name in names):
        raise InputError(source, f"is {text!r}", "one or more (comma-separated) of " + ", ".join([*PRESETS, "random"]))
    return names


# -- what is reused per CT and camera


class Prepared:
    """The DiffDRR renderer of a CT's attenuation for a camera (in chunks of 4096 rays, as
    ``simulate.write_cases`` renders), with the CT's HU bins as a mask for the material pass."""

    def __init__(self, ct: Volume, camera: Camera, drr=None, bone_scale: float = 1.0):
        from .diffdrr_bridge import make_diffdrr

        self.ct, self.camera = ct, camera
        self.mu = Volume(hu_to_mu(ct.data.float(), bone_scale), ct.ijk_to_ras)
        patch = 64 if camera.rows * camera.cols > 64 * 64 else None
        self.drr = make_diffdrr(self.mu, camera, patch_size=patch) if drr is None else drr
        self._shares = None
        self._posterior = None

    def material_shares(self) -> Tensor:
        """``(labels, 4)`` float64: the share of each label's reference attenuation per material."""
        if self._shares is None:
            hu = self.ct.data.float()
            n_bins = int(round((METAL_HU - BONE_START_HU) / BIN_HU))
            label = ((hu - BONE_START_HU) / BIN_HU).floor().clamp(-1, n_bins - 1) + 1  # 0 soft, 1..n bins
            label = torch.where(hu >= METAL_HU, torch.full_like(label, n_bins + 1), label)
            centre = BONE_START_HU + BIN_HU * (torch.arange(n_bins, dtype=torch.float64) + 0.5)
            # a water/cortical-bone mixture of volume fraction v = HU / BONE_HU: mu = 0.02 (1 + 2 v)
            v = (centre / BONE_HU).clamp(max=1.0)
            bone = 3 * v / (1 + 2 * v)
            shares = torch.zeros(n_bins + 2, 4, dtype=torch.float64)
            shares[0, 0] = 1.0
            shares[1:n_bins + 1, 0], shares[1:n_bins + 1, 1] = 1 - bone, bone
            shares[n_bins + 1, 2] = 1.0  # metal: moved to iron's channel for ct_metal "iron"
            self.drr.register_buffer("mask", label.to(torch.float32), persistent=False)
            self._shares = shares
        return self._shares

    def materials(self, camera_from_world: Tensor, ct_metal: str) -> Tensor:
        """``(4, rows, cols)`` float64 reference-attenuation path integrals of soft, bone, Ti, Fe."""
        from .diffdrr_bridge import DiffDRRFrame, diffdrr_pose

        shares = self.material_shares()
        pose = diffdrr_pose(camera_from_world, DiffDRRFrame.of(self.drr, self.mu.ijk_to_ras))
        with torch.no_grad():
            channels = self.drr(pose, mask_to_channels=True)[0].to(torch.float64)  # (labels present, rows, cols)
        shares = shares[:channels.shape[0]].clone()
        if ct_metal == "iron":
            shares[:, 3], shares[:, 2] = shares[:, 2], 0.0
        return torch.einsum("lm,lhw->mhw", shares, channels)

    def posterior_y(self) -> float:
        """RAS y (mm) of the body's posterior surface (voxels above -300 HU), where the table lies."""
        if self._posterior is None:
            data = self.ct.data[::2, ::2, ::2]
            idx = (data > -300).nonzero().to(torch.float64) * 2
            A = self.ct.ijk_to_ras
            if idx.numel() == 0:
                self._posterior = float(self.ct.corners()[:, 1].min())
            else:
                self._posterior = float((idx @ A[1, :3] + A[1, 3]).min())
        return self._posterior


def prepare(ct: Volume, camera: Camera) -> Prepared:
    """What :func:`simulate_frame` reuses for one CT (HU) and camera."""
    return Prepared(ct, camera)


# -- geometry helpers


def _pixel_rays(camera_from_world: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
    """Source ``(3,)`` and pixel centres ``(rows, cols, 3)`` in world mm."""
    T = torch.as_tensor(camera_from_world, dtype=torch.float64).reshape(4, 4)
    W = torch.linalg.inv(T)
    du, dv = camera.pixel_spacing
    cu, cv = camera.principal_point
    v, u = torch.meshgrid(torch.arange(camera.rows, dtype=torch.float64),
                          torch.arange(camera.cols, dtype=torch.float64), indexing="ij")
    p = torch.stack([(u - cu) * du, (v - cv) * dv, torch.full_like(u, camera.sdd)], -1)
    return W[:3, 3], p @ W[:3, :3].T + W[:3, 3]


def _slab_length(source: Tensor, target: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Length (mm) of each segment source -> target ``(..., 3)`` inside the box [low, high] (inf allowed)."""
    d = target - source
    with torch.no_grad():
        safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t0, t1 = (low - source) / safe, (high - source) / safe
        lo = torch.minimum(t0, t1).nan_to_num(-1e30)
        hi = torch.maximum(t0, t1).nan_to_num(1e30)
        parallel = d.abs() < 1e-12
        inside = (source >= low) & (source <= high)
        lo = torch.where(parallel, torch.where(inside, -1e30, 1e30), lo)
        hi = torch.where(parallel, torch.where(inside, 1e30, -1e30), hi)
        a = lo.amax(-1).clamp_min(0.0)
        b = hi.amin(-1).clamp_max(1.0)
    return (b - a).clamp_min(0.0) * d.norm(dim=-1)


def _ray_in_ct(ct: Volume, source: Tensor, pixels: Tensor) -> Tensor:
    """``(rows, cols)`` path length (mm) of each ray through the CT's voxel box."""
    A_inv = torch.linalg.inv(ct.ijk_to_ras)
    s = A_inv[:3, :3] @ source + A_inv[:3, 3]
    p = pixels @ A_inv[:3, :3].T + A_inv[:3, 3]
    n = torch.tensor(ct.shape, dtype=torch.float64)
    frac = _slab_length(s.expand_as(p), p, torch.full((3,), -0.5, dtype=torch.float64), n - 0.5)
    return frac / (p - s).norm(dim=-1) * (pixels - source).norm(dim=-1)


def _gaussian_blur(image: Tensor, sigma_px: tuple[float, float]) -> Tensor:
    """Separable Gaussian blur of ``(rows, cols)`` with reflecting edges (sigma along columns, rows)."""
    x = image[None, None]
    for dim, sigma in ((2, sigma_px[1]), (3, sigma_px[0])):  # rows use dv, columns du
        if sigma < 0.3:
            continue
        radius = max(1, min(int(3 * sigma), x.shape[dim] - 1))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        pad = [0, 0, 0, 0]
        pad[0 if dim == 3 else 2] = pad[1 if dim == 3 else 3] = radius
        x = F.pad(x, pad, mode="reflect")
        kernel = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
        x = F.conv2d(x, kernel)
    return x[0, 0]


def _u(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _cylinder(X: Tensor, Y: Tensor, p0, p1, radius: float) -> Tensor:
    """Path length (mm) through a cylinder of ``radius`` about the segment p0-p1, seen side-on, at (X, Y)."""
    ax, ay = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(ax * ax + ay * ay, 1e-12)
    t = (((X - p0[0]) * ax + (Y - p0[1]) * ay) / length2).clamp(0, 1)
    d2 = (X - p0[0] - t * ax) ** 2 + (Y - p0[1] - t * ay) ** 2
    return 2 * (radius**2 - d2).clamp_min(0).sqrt()


def _rectangle(X: Tensor, Y: Tensor, centre, angle: float, half: tuple[float, float]) -> Tensor:
    """1 inside a rotated rectangle, 0 outside, with a half-pixel soft edge."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = (X - centre[0]) * c + (Y - centre[1]) * s, -(X - centre[0]) * s + (Y - centre[1]) * c
    return ((half[0] - x.abs()).clamp(0, 1) * (half[1] - y.abs()).clamp(0, 1))


def _instruments_2d(physics: Physics, camera: Camera, g: torch.Generator) -> tuple[Tensor, list]:
    """``(4, rows, cols)`` reference-attenuation path integrals of screws, K-wires and retractors
    drawn flat on the detector (the training randomisation's model; frames use :func:`draw_instruments`).

    Drawn in the plane through the isocentre parallel to the detector (object mm, magnified onto
    the detector by 1 / ISOCENTRE_FRACTION): a flat, 2D model of instruments lying near the
    isocentre. Screws: titanium, 6.5 mm shaft of 35-55 mm foreshortened by U(0.3, 1), a 12 mm
    tulip head; in pairs 15-25 mm either side of a vertical line near the centre. K-wires: steel,
    1.6-2.5 mm, 100-250 mm long, any direction. Retractors: steel blades 20-40 x 60-120 mm,
    1.5-4 mm of steel along the ray, on a 8 mm handle running out of the field.
    """
    rows, cols = camera.image_size
    du, dv = camera.pixel_spacing
    cu, cv = camera.principal_point
    v, u = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    X, Y = (u - cu) * du / MAGNIFICATION, (v - cv) * dv / MAGNIFICATION  # object mm at the isocentre
    half_w, half_h = cols * du / MAGNIFICATION / 2, rows * dv / MAGNIFICATION / 2
    out = torch.zeros(4, rows, cols, dtype=torch.float64)
    ti, fe = reference_mu("titanium"), reference_mu("iron")
    drawn = []
    midline = _u(g, -0.2, 0.2) * half_w
    for i in range(physics.screws):
        side = 1 if i % 2 == 0 else -1
        level = _u(g, -0.6, 0.6) * half_h
        x0 = midline + side * _u(g, 15.0, 25.0)
        length = _u(g, 35.0, 55.0) * _u(g, 0.3, 1.0)
        angle = math.pi / 2 * (1 - side) + _u(g, -0.5, 0.5)  # pointing medially, give or take 30 deg
        p1 = (x0 + length * math.cos(angle + math.pi), level + length * math.sin(angle + math.pi))
        p0 = (x0, level)
        out[2] += ti * (_cylinder(X, Y, p0, p1, 3.25) + _cylinder(X, Y, p0, (p0[0] + 1e-3, p0[1]), 6.0))
        drawn.append({"kind": "screw", "head_mm": list(p0), "tip_mm": list(p1)})
    for _ in range(physics.kwires):
        centre = (_u(g, -0.6, 0.6) * half_w, _u(g, -0.6, 0.6) * half_h)
        angle, length, radius = _u(g, 0, math.pi), _u(g, 100.0, 250.0), _u(g, 0.8, 1.25)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        p0, p1 = (centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)
        out[3] += fe * _cylinder(X, Y, p0, p1, radius)
        drawn.append({"kind": "kwire", "from_mm": list(p0), "to_mm": list(p1), "radius_mm": radius})
    for _ in range(physics.retractors):
        side = 1 if _u(g) < 0.5 else -1
        centre = (midline + side * _u(g, 30.0, 60.0), _u(g, -0.5, 0.5) * half_h)
        angle = _u(g, -0.3, 0.3)
        w, h, steel = _u(g, 10.0, 20.0), _u(g, 30.0, 60.0), _u(g, 1.5, 4.0)
        blade = _rectangle(X, Y, centre, angle, (w, h)) * steel
        end = (centre[0] + side * 3 * max(half_w, half_h), centre[1] + _u(g, -0.3, 0.3) * half_h)
        out[3] += fe * (blade + _cylinder(X, Y, centre, end, 4.0))
        drawn.append({"kind": "retractor", "centre_mm": list(centre), "blade_mm": [2 * w, 2 * h]})
    return out, drawn


def draw_instruments(physics: Physics, ct: Volume, generator: torch.Generator) -> list[dict]:
    """Instruments in 3D, world (RAS) mm about the CT's centre, as JSON-able dicts.

    Pass the same list to :func:`simulate_frame` for every view of a case so that all views see
    the same instruments. Screws (titanium): in pairs either side of a sagittal plane within 15 mm
    of the centre, heads 20-50 mm posterior of the centre, 35-55 mm shafts of 6.5 mm aimed
    anteriorly, converging 5-25 deg towards the midline and tilted up to 10 deg cranio-caudally,
    a 12 mm tulip head behind; levels within 80 mm of the centre. K-wires (steel): 1.6-2.5 mm,
    100-250 mm, any direction, through a point within 60 mm of the centre. Retractors (steel):
    a blade 20-40 mm (S-I) by 60-120 mm (A-P), 1.5-3 mm thick, standing in the wound 25-50 mm
    lateral of the midline and 40-80 mm posterior, on an 8 mm handle running 150 mm back and out.
    Each is ``{"kind", "material", "cylinders": [[a, b, radius]...], "plates": [{"centre", "axes",
    "half"}...]}`` with ``axes`` three orthonormal rows and ``half`` the half sizes along them.
    """
    g, c = generator, [float(x) for x in ct.centre]
    out = []
    midline = c[0] + _u(g, -15.0, 15.0)

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    for i in range(physics.screws):
        side = 1.0 if i % 2 == 0 else -1.0
        if i % 2 == 0:
            level = c[2] + _u(g, -80.0, 80.0)
        head = [midline + side * _u(g, 15.0, 25.0), c[1] - _u(g, 20.0, 50.0), level]
        converge, tilt = math.radians(_u(g, 5.0, 25.0)), math.radians(_u(g, -10.0, 10.0))
        d = unit([-side * math.sin(converge), math.cos(converge), math.sin(tilt)])
        length = _u(g, 35.0, 55.0)
        tip = [h + length * x for h, x in zip(head, d)]
        back = [h - 12.0 * x for h, x in zip(head, d)]
        out.append({"kind": "screw", "material": "titanium", "cylinders": [[head, tip, 3.25], [back, head, 6.0]],
                    "plates": []})
    for _ in range(physics.kwires):
        centre = [x + _u(g, -60.0, 60.0) for x in c]
        z, phi = _u(g, -1.0, 1.0), _u(g, 0.0, 2 * math.pi)
        d = [math.sqrt(1 - z * z) * math.cos(phi), math.sqrt(1 - z * z) * math.sin(phi), z]
        half = _u(g, 50.0, 125.0)
        a, b = [x - half * e for x, e in zip(centre, d)], [x + half * e for x, e in zip(centre, d)]
        out.append({"kind": "kwire", "material": "iron", "cylinders": [[a, b, _u(g, 0.8, 1.25)]], "plates": []})
    for _ in range(physics.retractors):
        side = 1.0 if _u(g) < 0.5 else -1.0
        height, width, thick = _u(g, 60.0, 120.0), _u(g, 20.0, 40.0), _u(g, 1.5, 3.0)
        centre = [midline + side * _u(g, 25.0, 50.0), c[1] - _u(g, 40.0, 80.0), c[2] + _u(g, -60.0, 60.0)]
        plate = {"centre": centre, "axes": [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
                 "half": [height / 2, width / 2, thick / 2]}
        grip = [centre[0], centre[1] - height / 2, centre[2]]
        end = [grip[0] + side * 100.0, grip[1] - 110.0, grip[2]]
        out.append({"kind": "retractor", "material": "iron", "cylinders": [[grip, end, 4.0]], "plates": [plate]})
    return out


def _cylinder_length(source: Tensor, pixels: Tensor, a, b, radius: float) -> Tensor:
    """Exact length (mm) of each segment source -> pixel inside the cylinder of ``radius`` about a-b."""
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    length = float((b - a).norm())
    e = (b - a) / max(length, 1e-9)
    d = pixels - source  # (rows, cols, 3), t in [0, 1]
    w = source - a
    de, we = d @ e, float(w @ e)
    d_perp = d - de[..., None] * e
    w_perp = w - we * e
    A = (d_perp * d_perp).sum(-1)
    B = 2 * (d_perp @ w_perp)
    C = float(w_perp @ w_perp) - radius**2
    disc = B * B - 4 * A * C
    root = disc.clamp_min(0).sqrt()
    safe_A = A.clamp_min(1e-12)
    t0, t1 = (-B - root) / (2 * safe_A), (-B + root) / (2 * safe_A)
    parallel = A < 1e-12
    t0 = torch.where(parallel, torch.where(torch.tensor(C < 0), -1e30, 1e30), t0)
    t1 = torch.where(parallel, torch.where(torch.tensor(C < 0), 1e30, -1e30), t1)
    t0 = torch.where(disc < 0, torch.full_like(t0, 1e30), t0)
    # along the axis: 0 <= we + t de <= length
    safe_de = torch.where(de.abs() < 1e-12, torch.full_like(de, 1e-12), de)
    s0, s1 = (0 - we) / safe_de, (length - we) / safe_de
    lo, hi = torch.minimum(s0, s1), torch.maximum(s0, s1)
    inside_axis = (we >= 0) & (we <= length)
    lo = torch.where(de.abs() < 1e-12, torch.full_like(lo, -1e30 if inside_axis else 1e30), lo)
    hi = torch.where(de.abs() < 1e-12, torch.full_like(hi, 1e30 if inside_axis else -1e30), hi)
    start = torch.maximum(torch.maximum(t0, lo), torch.zeros_like(t0))
    stop = torch.minimum(torch.minimum(t1, hi), torch.ones_like(t1))
    return (stop - start).clamp_min(0) * d.norm(dim=-1)


def _plate_length(source: Tensor, pixels: Tensor, plate: dict) -> Tensor:
    """Length (mm) of each segment source -> pixel inside an oriented box (a retractor blade)."""
    R = torch.tensor(plate["axes"], dtype=torch.float64)  # rows: the box's axes in world
    centre = torch.tensor(plate["centre"], dtype=torch.float64)
    half = torch.tensor(plate["half"], dtype=torch.float64)
    s, p = R @ (source - centre), (pixels - centre) @ R.T
    return _slab_length(s.expand_as(p), p, -half, half)


def _render_instruments(instruments: list[dict], source: Tensor, pixels: Tensor) -> Tensor:
    """``(4, rows, cols)`` reference-attenuation path integrals of 3D instruments."""
    out = torch.zeros(4, *pixels.shape[:2], dtype=torch.float64)
    for tool in instruments:
        channel = MATERIALS.index(tool["material"])
        mu = reference_mu(tool["material"])
        for a, b, r in tool["cylinders"]:
            out[channel] += mu * _cylinder_length(source, pixels, a, b, float(r))
        for plate in tool["plates"]:
            out[channel] += mu * _plate_length(source, pixels, plate)
    return out


def _table(prepared: Prepared, source: Tensor, pixels: Tensor) -> Tensor:
    """``(4, rows, cols)``: a 500 mm wide, 50 mm thick carbon-fibre table top 5 mm under the body
    (about 1 mm Al-equivalent through its thickness, as soft-tissue-like attenuation) with steel side
    rails (10 x 30 mm) at its edges, infinite along the patient's S-I axis (RAS axes)."""
    top = prepared.posterior_y() - 5.0
    cx = float(prepared.ct.centre[0])
    inf = float("inf")
    out = torch.zeros(4, *pixels.shape[:2], dtype=torch.float64)
    s = source.expand_as(pixels)

    def box(x0, x1, y0, y1):
        lo = torch.tensor([x0, y0, -inf], dtype=torch.float64)
        hi = torch.tensor([x1, y1, inf], dtype=torch.float64)
        return _slab_length(s, pixels, lo, hi)

    # 1 mm Al at 60 keV = 0.27 g/cm^2 x 0.2778 cm^2/g = 0.075 of line integral, over 50 mm
    per_mm = 0.1 * DENSITY["aluminium"] * float(mass_attenuation("aluminium", torch.tensor(REFERENCE_KEV))) / 50.0
    out[0] = per_mm * box(cx - 250.0, cx + 250.0, top - 50.0, top)
    fe = reference_mu("iron")
    for x0 in (cx - 260.0, cx + 250.0):
        out[3] += fe * box(x0, x0 + 10.0, top - 40.0, top - 10.0)
    return out


def crop_ct(ct: Volume, fraction: float, generator: torch.Generator) -> Volume:
    """The CT with ``fraction`` of its slices along the axis nearest S-I removed (split at random
    between the two ends): give registration this CT and simulate the frame from the whole one,
    and the X-ray shows anatomy the CT does not have, as a short CT scan range leaves it.
    The voxel grid of what is kept is unchanged (``ijk_to_ras`` shifted by the slices cut)."""
    if not 0 <= fraction < 1:
        raise InputError("truncation", f"is {fraction}", "a share of the CT's slices from 0 to below 1")
    axis = int(ct.ijk_to_ras[2, :3].abs().argmax())  # the voxel axis that runs most along S
    n = ct.shape[axis]
    cut = min(int(round(fraction * n)), n - 2)
    first = int(round(_u(generator) * cut))
    keep = slice(first, first + n - cut)
    index = [slice(None)] * 3
    index[axis] = keep
    data = ct.data[(..., *index)]
    A = ct.ijk_to_ras.clone()
    A[:3, 3] = A[:3, 3] + A[:3, axis] * first
    return Volume(data.clone(), A)


def _truncation(paths: Tensor, inside: Tensor, factor: float) -> Tensor:
    """Where rays miss the CT, the path lengths of the nearest ray through it, times ``factor``."""
    from scipy.ndimage import distance_transform_edt

    miss = (~inside).numpy()
    if not miss.any() or miss.all():
        return paths
    _, (ii, jj) = distance_transform_edt(miss, return_indices=True)
    near = paths[:, torch.from_numpy(ii), torch.from_numpy(jj)]
    return torch.where(inside[None], paths, factor * near)


def _distortion(image: Tensor, physics: Physics) -> Tensor:
    """Image-intensifier pincushion (radial) and S (rotational) distortion, r normalised to the corner."""
    coefficients = torch.tensor([[physics.pincushion, physics.s_distortion]], dtype=torch.float64)
    return distort(image[None, None], coefficients)[0, 0]


def _field_mask(physics: Physics, camera: Camera, g: torch.Generator) -> tuple[Tensor | None, list]:
    """``(rows, cols)`` 1 in the exposed field, 0 behind collimator blades or the iris; None if open."""
    rows, cols = camera.image_size
    if physics.shutters <= 0 and physics.iris <= 0:
        return None, []
    mask = torch.ones(rows, cols, dtype=torch.float64)
    bands = []
    if physics.shutters > 0:
        bands = [int(round(_u(g, 0.3, 1.0) * physics.shutters * n)) for n in (rows, rows, cols, cols)]
        top, bottom, left, right = bands
        mask[:top], mask[rows - bottom:] = 0, 0
        mask[:, :left], mask[:, cols - right:] = 0, 0
    if physics.iris > 0:
        v, u = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                              indexing="ij")
        r = torch.sqrt((u - (cols - 1) / 2) ** 2 + (v - (rows - 1) / 2) ** 2)
        mask = mask * (physics.iris * min(rows, cols) / 2 - r + 0.5).clamp(0, 1)
    return mask, bands


def _process(counts: Tensor, physics: Physics, exposed: Tensor, camera: Camera) -> Tensor:
    """The system's processing of raw counts into the exported image (0 .. 2^bits - 1)."""
    x = (counts - physics.offset).clamp_min(1.0)
    y = torch.log(x) if physics.mapping in ("log", "sigmoid") else x
    if physics.unsharp_amount > 0:
        du, dv = camera.pixel_spacing
        y = y + physics.unsharp_amount * (y - _gaussian_blur(y, (physics.unsharp_sigma_mm / du,
                                                                 physics.unsharp_sigma_mm / dv)))
    values = y[exposed] if int(exposed.sum()) >= 16 else y.flatten()
    lo, hi = torch.quantile(values, torch.tensor(physics.window, dtype=y.dtype))
    z = ((y - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    if physics.mapping == "sigmoid":  # a film-like S curve over the window, 0 and 1 kept
        s0, s1 = 1 / (1 + math.exp(3.0)), 1 / (1 + math.exp(-3.0))
        z = ((torch.sigmoid(6 * (z - 0.5)) - s0) / (s1 - s0)).clamp(0, 1)
    z = z ** physics.gamma
    if physics.invert:
        z = 1 - z
    return (z * (2**physics.bits - 1)).round()


def simulate_frame(ct: Volume, camera_from_world: Tensor, camera: Camera, physics: Physics,
                   generator: torch.Generator, prepared: Prepared | None = None,
                   instruments: list[dict] | None = None) -> tuple[Tensor, dict]:
    """One exported X-ray ``(rows, cols)`` float64 (16-bit counts, or 0 .. 2^bits - 1 processed) and its meta.

    ``ct`` in HU, ``camera_from_world`` (4, 4). ``prepared`` (:func:`prepare` of this CT and
    camera) may be passed to reuse the renderer. The meta holds ``bits``, ``photometric``
    ("MONOCHROME2": air bright; "MONOCHROME1": inverted, bone bright), ``processed``, ``physics``
    (:meth:`Physics.to_json`) and what was drawn: ``shutters_px`` (top, bottom, left, right),
    ``instruments`` (:func:`draw_instruments`' list, world mm). ``instruments``: such a list to use
    instead of drawing one (the same for every view of a case); only drawn when the physics has any.
    """
    from .diffdrr_bridge import siddon_line_integrals

    p, g = physics, generator
    prepared = Prepared(ct, camera) if prepared is None else prepared
    T = torch.as_tensor(camera_from_world, dtype=torch.float64).reshape(-1, 4, 4)[:1]
    meta = {"bits": p.bits, "photometric": "MONOCHROME1" if p.invert else "MONOCHROME2",
            "processed": p.mapping != "none", "physics": p.to_json()}
    du, dv = camera.pixel_spacing
    rows, cols = camera.image_size
    needs_paths = p.kvp is not None or p.screws or p.kwires or p.retractors or p.table or p.truncation > 0
    if p.kvp is None and not needs_paths:
        with torch.no_grad():  # exactly simulate_case's plain line integrals
            L = siddon_line_integrals(prepared.mu, T, camera, drr=prepared.drr)[0].to(torch.float64)
        primary = torch.exp(-L.clamp_min(0))
    else:
        if p.kvp is None:
            with torch.no_grad():
                L = siddon_line_integrals(prepared.mu, T, camera, drr=prepared.drr)[0].to(torch.float64)
            paths = torch.zeros(4, rows, cols, dtype=torch.float64)
            paths[0] = L
        else:
            paths = prepared.materials(T, p.ct_metal)
        paths = paths.clamp_min(0)
        if p.truncation > 0 or p.table or p.screws or p.kwires or p.retractors:
            source, pixels = _pixel_rays(T[0], camera)
        if p.truncation > 0:
            inside = _ray_in_ct(ct, source, pixels) > 1.0
            paths = _truncation(paths, inside, p.truncation)
        if p.table:
            paths = paths + _table(prepared, source, pixels)
        if p.screws or p.kwires or p.retractors:
            meta["instruments"] = draw_instruments(p, ct, g) if instruments is None else instruments
            paths = paths + _render_instruments(meta["instruments"], source, pixels)
        if p.kvp is None:
            primary = torch.exp(-paths.sum(0))
        else:
            E, w = spectrum(p.kvp, p.filtration_mm_al)
            ratios = torch.stack([mass_attenuation(m, E) / mass_attenuation(m, torch.tensor(REFERENCE_KEV))
                                  for m in MATERIALS], -1)  # (energies, 4)
            primary = torch.zeros(rows, cols, dtype=torch.float64)
            for e in range(E.numel()):
                primary += w[e] * torch.exp(-torch.einsum("m,mhw->hw", ratios[e], paths))
    open_primary = primary
    if p.heel > 0:
        axis = int(_u(g) < 0.5)
        n = (rows, cols)[axis]
        t = torch.linspace(0, 1, n, dtype=torch.float64)
        t = t if _u(g) < 0.5 else 1 - t
        ramp = 1 + p.heel * (0.5 - t)
        primary = primary * (ramp[:, None] if axis == 0 else ramp[None, :])
    field, bands = _field_mask(p, camera, g)
    if field is not None:
        primary = primary * (p.shutter_transmission + (1 - p.shutter_transmission) * field)
        if bands:
            meta["shutters_px"] = bands
    if p.scatter_fraction > 0:
        source = primary if p.scatter_model == "blur" else primary * -torch.log(open_primary.clamp_min(1e-12)) * math.e
        scatter = p.scatter_fraction * _gaussian_blur(source, (p.scatter_sigma_mm / du, p.scatter_sigma_mm / dv))
        signal = primary + scatter
    else:
        signal = primary
    if p.grid_depth > 0:
        axis, phase = int(_u(g) < 0.5), _u(g, 0, 2 * math.pi)
        n = (rows, cols)[axis]
        lines = 1 - p.grid_depth * 0.5 * (1 + torch.cos(2 * math.pi * torch.arange(n, dtype=torch.float64)
                                                       / p.grid_period_px + phase))
        signal = signal * (lines[:, None] if axis == 0 else lines[None, :])
    if p.pincushion > 0 or p.s_distortion > 0:
        signal = _distortion(signal, p)
    if p.vignetting > 0:
        v, u = torch.meshgrid(torch.linspace(-1, 1, rows, dtype=torch.float64),
                              torch.linspace(-1, 1, cols, dtype=torch.float64), indexing="ij")
        signal = signal * (1 - p.vignetting * (u**2 + v**2) / 2)
    expected = p.photons * signal
    quanta = torch.poisson(expected, generator=g) if p.quantum_noise else expected
    if p.blur_mm > 0:
        quanta = _gaussian_blur(quanta, (p.blur_mm / du, p.blur_mm / dv))
    if p.gain_variation > 0:
        quanta = quanta * (1 + p.gain_variation * torch.randn(rows, cols, generator=g, dtype=torch.float64))
    counts = p.gain * quanta + p.offset
    if p.read_noise > 0:
        counts = counts + p.read_noise * torch.randn(rows, cols, generator=g, dtype=torch.float64)
    if p.defect_fraction > 0 or p.defect_lines > 0:
        n = int(round(p.defect_fraction * rows * cols))
        where = torch.randperm(rows * cols, generator=g)[:n]
        hot = torch.rand(n, generator=g) < 0.5
        flat = counts.flatten().clone()
        flat[where] = torch.where(hot, torch.tensor(65535.0, dtype=flat.dtype), torch.tensor(p.offset, dtype=flat.dtype))
        counts = flat.reshape(rows, cols)
        for _ in range(p.defect_lines):
            if _u(g) < 0.5:
                counts[int(_u(g) * rows)] = p.offset
            else:
                counts[:, int(_u(g) * cols)] = p.offset
    counts = counts.round().clamp(0, 65535)
    if p.mapping == "none":
        return counts, meta
    exposed = torch.ones(rows, cols, dtype=torch.bool) if field is None else field > 0.5
    return _process(counts, p, exposed, camera), meta
