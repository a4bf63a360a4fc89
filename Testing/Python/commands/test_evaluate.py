"""``sphericalreg evaluate`` end to end: every method, the tables and plots, shards and merging."""

from __future__ import annotations

from SphericalRegLib import cli
from SphericalRegLib.evaluation.rows import read_rows


def test_evaluate_command_tabulates_methods_and_plots(tiny_model_file, tiny_cases, tmp_path):
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_cases), "--model", str(tiny_model_file), "--out", str(out),
                     "--methods", "ours,ours-gd,regressor,ours-no-intensity,diffpose-ncc,euclidean",
                     "--baseline-iterations", "3"]) == 0
    table = (out / "results.md").read_text()
    # ours-no-intensity is a stage of ours-learnt's run, which runs for it unasked
    for method in ("| ours |", "| ours-learnt |", "| ours-gd |", "| regressor |", "| ours-no-intensity |",
                   "| diffpose-ncc |"):
        assert method in table
    assert "Not run: euclidean" in table  # no model given for the ablation: said, not hidden
    for name in ("results.csv", "cases.csv", "cdf.png", "convergence.png", "info.json", "curves.json"):
        assert (out / name).stat().st_size > 0
    for method in ("ours", "diffpose-ncc"):  # every method that runs leaves its result.json
        assert (out / method / "case_000" / "result.json").exists()
    rows = read_rows(out / "cases.csv")
    assert len(rows) == 2 * 6
    baseline = [r for r in rows if r.method == "diffpose-ncc"]
    assert all(r.confidence is None and r.cost is None and isinstance(r.diverged, bool) for r in baseline)
    # two cases cannot calibrate a confidence: a clear refusal, not a meaningless fit
    assert cli.main(["evaluate", str(tiny_cases), "--model", str(tiny_model_file), "--out", str(tmp_path / "e2"),
                     "--methods", "ours", "--calibrate"]) == 2


def test_evaluate_shards_merge_into_one_table(tiny_cases, tmp_path, capsys):
    common = ["evaluate", str(tiny_cases), "--methods", "diffpose-ncc", "--baseline-iterations", "2"]
    for k in (0, 1):
        assert cli.main(common + ["--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}")]) == 0
    assert cli.main(["evaluate", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"),
                     "--out", str(tmp_path / "all")]) == 0
    rows = read_rows(tmp_path / "all" / "cases.csv")
    assert len(rows) == 2 and {r.case for r in rows} == {"case_000", "case_001"}
    assert "| diffpose-ncc | 2 |" in (tmp_path / "all" / "results.md").read_text()
    capsys.readouterr()
    assert cli.main(common + ["--shard", "2/2", "--out", str(tmp_path / "bad")]) == 2
    assert cli.main(common[:2] + ["--methods", "ours-typo", "--out", str(tmp_path / "bad2")]) == 2
    assert "--methods: unknown ['ours-typo']" in capsys.readouterr().err
