"""Evaluation rows keep their types through cases.csv and the signals the confidence reads (SphericalRegLib.evaluation.rows)."""

import math

import pytest
import torch

from SphericalRegLib.camera import Camera, canonical_ap_pose
from SphericalRegLib.errors import InputError
from SphericalRegLib.evaluation.rows import Row, read_rows, write_rows
from SphericalRegLib.register import RegistrationResult


def test_rows_round_trip_through_csv_with_their_types(tmp_path):
    rows = [Row("ours", "case_000", 1.5, 12, 0.75, False, 0.9, 0.01, 0.4, 0.1, 0.3, 0.05),
            Row("diffpose-ncc", "case_000", 2.0, 150, None, True, None, None, 25.0, 9.0, 20.0, 3.0)]
    write_rows(tmp_path / "cases.csv", rows)
    assert read_rows(tmp_path / "cases.csv") == rows


def test_a_damaged_table_is_an_input_error_naming_the_column(tmp_path):
    write_rows(tmp_path / "cases.csv", [Row("ours", "c", 1.0, 1, None, False, None, None, 1.0, 1.0, 1.0, 1.0)])
    text = (tmp_path / "cases.csv").read_text().replace(",False,", ",maybe,")
    (tmp_path / "cases.csv").write_text(text)
    with pytest.raises(InputError, match="'diverged' holds 'maybe'"):
        read_rows(tmp_path / "cases.csv")


def test_a_row_keeps_the_learnt_cost_the_confidence_read_also_where_the_learnt_stage_was_skipped():
    # A model whose similarity is below the learnt stage's gate registers without that stage; its
    # result still carries the learnt cost at the final pose, which the confidence reads, and the
    # calibration at the end of training must be able to fit on it (it once found "0 runs").
    camera = Camera(1020.0, (1.0, 1.0), (31.5, 31.5), (64, 64))
    pose = canonical_ap_pose(torch.zeros(3), camera.sdd)
    landmarks = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)

    def row(similarity):
        result = RegistrationResult(pose, 1.0, similarity, 3, None, False, camera, final_ncc=0.9)
        assert "similarity" not in result.stages
        return Row.from_result("ours", "c", result, pose, landmarks)

    assert row(0.25).cost == 0.25 and row(0.25).final_ncc == 0.9 and row(0.25).mTRE == 0
    assert row(math.nan).cost is None  # a peer's result: no learnt cost


def test_a_joint_registration_row_carries_its_largest_view_shift():
    # The registrar shows the lowest view's confidence, which for a fit on the shift is the largest
    # view's shift: a joint part fitted on view 0's would be fitted on another number than it is used on.
    from SphericalRegLib.register.records import ViewResult

    camera = Camera(1020.0, (1.0, 1.0), (31.5, 31.5), (64, 64))
    pose = canonical_ap_pose(torch.zeros(3), camera.sdd)
    landmarks = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    views = [ViewResult("ap", camera, pose, 0.9, residual_shift_mm=0.3),
             ViewResult("lateral", camera, pose, 0.8, residual_shift_mm=0.7)]
    result = RegistrationResult(pose, 1.0, 0.2, 3, None, False, camera, final_ncc=0.9, residual_shift_mm=0.3,
                                views=views)
    assert Row.from_result("ours", "c", result, pose, landmarks).residual_shift == 0.7
    alone = RegistrationResult(pose, 1.0, 0.2, 3, None, False, camera, final_ncc=0.9, residual_shift_mm=0.3,
                               views=views[:1])
    assert Row.from_result("ours", "c", alone, pose, landmarks).residual_shift == 0.3
