"""scripts/gpu_check.sh's measurement, at a tiny size on CPU: both datasets, both modes."""

import json

from benchmarks.bench_parity import SIZES, main, synthetic_dialogues
from sdt_ray.config import load_recipe


def test_synthetic_dialogues_hold_the_asked_sizes():
    recipe = load_recipe("jobs/recipes/iemocap.yaml")
    dialogues = synthetic_dialogues(recipe, *SIZES["iemocap"])
    assert len(dialogues) == 120 and abs(sum(len(d) for d in dialogues) - 5810) <= 60  # rounding per dialogue
    assert dialogues[0].features["audio"].shape[1] == 1582 and dialogues[0].speakers.max() < 2


def test_tiny_run_on_cpu_reports_both_modes(tmp_path):
    out = tmp_path / "parity.json"
    results = main(["--device", "cpu", "--scale", "0.01", "--hidden", "32", "--epochs", "2", "--output", str(out)])
    assert json.loads(out.read_text()) == results and results["precision"] == "fp32"
    for dataset in ("iemocap", "meld"):
        row = results[dataset]
        assert row["hidden"] == 32 and row["dialogues"] == max(2, round(0.01 * SIZES[dataset][0]))
        for mode in ("ours", "naive"):
            assert len(row[mode]["epochs_s"]) == 2 and row[mode]["train_utt_per_s"] > 0
            assert row[mode]["inference_utt_per_s"] > 0 and row[mode]["peak_gpu_mb"] is None
        assert row["naive"]["attention"] == "math (unfused)" and row["speedup_train"] > 0
