import json
import math

from sdt_ray.summary import format_summary, summarize


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
