import json
import math

from sdt_ray.summary import format_summary, summarize, summarize_to


def test_mean_and_sample_std_over_runs(tmp_path):
    dirs = []
    for i, (acc, wf1, mf1) in enumerate([(0.60, 0.56, 0.30), (0.62, 0.58, 0.34)]):
        d = tmp_path / f"e{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"accuracy": acc, "weighted_f1": wf1, "macro_f1": mf1, "split": "test"}))
        dirs.append(str(d))
    s = summarize(dirs)
    assert s["n"] == 2
    assert math.isclose(s["weighted_f1"]["mean"], 0.57)
    assert math.isclose(s["weighted_f1"]["std"], math.sqrt(2 * 0.01**2))  # sample std of 0.56, 0.58
    assert s["macro_f1"]["min"] == 0.30 and s["macro_f1"]["max"] == 0.34
    assert "0.5700 ± 0.0141" in format_summary(s)


def test_summarize_to_writes_the_figures_and_says_so(tmp_path):
    dirs = []
    for i, wf1 in enumerate([0.5, 0.7]):
        d = tmp_path / f"e{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"accuracy": 0.6, "weighted_f1": wf1, "macro_f1": 0.3}))
        dirs.append(str(d))
    out = tmp_path / "summary.json"
    summary = summarize_to(dirs, str(out))
    assert json.loads(out.read_text())["weighted_f1"]["mean"] == 0.6
    assert summary.describe().endswith(f"wrote {out}")
    assert "0.6000 ± 0.1414" in summary.describe()  # sample std of 0.5 and 0.7
    assert "wrote" not in summarize_to(dirs).describe()  # nothing written, nothing said
