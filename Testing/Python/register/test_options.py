"""Registration options name the field that is wrong (SphericalRegLib.register.options)."""

import pytest

from SphericalRegLib.errors import InputError
from SphericalRegLib.register import RegisterOptions


@pytest.mark.parametrize("field, value", [("optimizer", "sgd"), ("iterations", 0), ("refine_levels", ())])
def test_bad_options_name_their_field(field, value):
    with pytest.raises(InputError) as e:
        RegisterOptions(**{field: value})
    assert e.value.source == field


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_ray_sampling_outside_the_full_count_is_refused(share):
    from SphericalRegLib.register import IntensityLevel

    with pytest.raises(InputError) as e:
        IntensityLevel(2.0, 128, 16, "difference", 12, ray_sampling=share)
    assert e.value.source == "ray_sampling"


def test_a_level_takes_its_share_of_the_full_sample_count():
    from SphericalRegLib.register import IntensityLevel
    from SphericalRegLib.render import default_n_samples

    full, half = (IntensityLevel(2.0, 128, 16, "difference", 12, ray_sampling=s) for s in (1.0, 0.5))
    shape = (190, 190, 160)
    assert full.samples(shape) == default_n_samples(shape)
    assert half.samples(shape) == -(-default_n_samples(shape) // 2)
