"""Evaluation rows keep their types through cases.csv (SphericalRegLib.evaluation.rows)."""

import pytest

from SphericalRegLib.errors import InputError
from SphericalRegLib.evaluation.rows import Row, read_rows, write_rows


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
