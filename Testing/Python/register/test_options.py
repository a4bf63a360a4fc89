"""Registration options name the field that is wrong (SphericalRegLib.register.options)."""

import pytest

from SphericalRegLib.errors import InputError
from SphericalRegLib.register import RegisterOptions


@pytest.mark.parametrize("field, value", [("optimizer", "sgd"), ("learnt_stage", "never"), ("iterations", 0),
                                          ("refine_levels", ()), ("residual_distortion_rounds", -1),
                                          ("residual_distortion_levels", 0)])
def test_bad_options_name_their_field(field, value):
    with pytest.raises(InputError) as e:
        RegisterOptions(**{field: value})
    assert e.value.source == field


def test_an_unknown_damping_rule_names_the_field_and_the_rules():
    from SphericalRegLib.register import IntensityLevel

    with pytest.raises(InputError) as e:
        IntensityLevel(3.0, 64, 8, "ncc", 12, damping_rule="marquardt")
    assert e.value.source == "damping_rule" and "nielsen" in str(e.value)


@pytest.mark.parametrize("width", [-1.0, float("nan"), float("inf"), "24"])
def test_a_metal_width_must_be_a_finite_non_negative_number_of_mm(width):
    from SphericalRegLib.register import IntensityLevel

    with pytest.raises(InputError) as e:
        IntensityLevel(3.0, 64, 8, "ncc", 12, metal_width_mm=width)
    assert e.value.source == "metal_width_mm" and "mm" in str(e.value)
