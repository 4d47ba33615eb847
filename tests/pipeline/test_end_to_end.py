"""The CLI flow of the README on the bundled MELD slice: import -> extract ->
train (2 Ray Train workers) -> evaluate -> summarize. Slow: minutes."""

import json

import pytest
from typer.testing import CliRunner

from sdt_ray.cli import app
from sdt_ray.importers import DEMO_CORPUS

pytestmark = pytest.mark.slow


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_flow_on_demo_corpus(ray_local, tmp_path):
    utt, feats, run, ev = tmp_path / "utt.parquet", tmp_path / "features", tmp_path / "run", tmp_path / "eval"
    assert "train 1499 utterances / 160 dialogues" in invoke("import", "meld", DEMO_CORPUS, utt)
    assert "2196 rows for 2196 utterances" in invoke("extract", "--input", utt, "--output", feats)
    out = invoke("train", "--features", feats, "--output", run, "--epochs", 8, "--lr", 1e-3, "--ema-decay", 0.9, "--workers", 2, "--seed", 1)
    assert "2 worker(s) with dialogues 80, 80" in out and out.count("\nepoch ") == 8
    out = invoke("evaluate", "--checkpoint", run / "best", "--features", feats, "--split", "test", "--output", ev)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_utterances"] == 361 and metrics["split"] == "test"
    assert f"{metrics['weighted_f1']:.4f}" in out
    # A majority-class guess on this slice scores weighted F1 0.30; eight epochs must beat it.
    assert metrics["weighted_f1"] > 0.35
    summary = json.loads(invoke("summarize", ev, ev, "--output", tmp_path / "s.json") and (tmp_path / "s.json").read_text())
    assert summary["weighted_f1"]["mean"] == metrics["weighted_f1"] and summary["weighted_f1"]["std"] == 0.0
    # D=256 text-only on 384-d input: 98,304 projection + 2,560 speakers + 395,264 block
    # + 65,536 gate + 65,792 reduction + 3,598 heads.
    assert "parameters       631,054 total, 631,054 trainable" in invoke("describe", run / "best")
