"""`make bench`'s side-by-side parity timing, at a tiny size (no timings asserted): the steps are
interleaved, the ratios are the measured means, and a reference that disagrees is refused."""

import itertools

import pytest
import torch

from benchmarks.parity_speed import interleaved, side_by_side
from sdt_ray.config import ModelConfig

TINY = ModelConfig(modalities=("text", "audio", "visual"), input_dims=(10, 12, 6), hidden=16, heads=4, dropout=0.5,
                   n_classes=5, max_speakers=2, max_len=32, normalize_inputs=False)


def test_steps_run_in_turn_and_their_means_are_measured():
    calls, ticks = [], itertools.count()
    clock = lambda: float(next(ticks))  # noqa: E731  one tick per reading

    def step(name: str, extra_ticks: int):
        def run():
            calls.append(name)
            for _ in range(extra_ticks):
                next(ticks)
        return run

    means = interleaved({"ours": step("ours", 0), "reference": step("reference", 2)}, repeats=3, clock=clock)
    assert calls == ["ours", "reference"] + ["ours", "reference"] * 3  # one warm-up each, then in turn
    assert means == {"ours": 1.0, "reference": 3.0}  # start and stop readings 1 tick apart, plus the step's own


def test_side_by_side_reports_both_and_their_ratio():
    threads = torch.get_num_threads()
    result = side_by_side(TINY, dialogues=2, utterances=5, repeats=2)
    assert result["max_logprob_difference"] < 1e-5
    for key in ("inference_utt_per_s", "train_step_utt_per_s"):
        assert result["ours"][key] > 0 and result["reference"][key] > 0
    expected = result["ours"]["inference_utt_per_s"] / result["reference"]["inference_utt_per_s"]
    assert result["ratio_inference"] == pytest.approx(expected, rel=0.01)
    expected = result["ours"]["train_step_utt_per_s"] / result["reference"]["train_step_utt_per_s"]
    assert result["ratio_train_step"] == pytest.approx(expected, rel=0.01)
    assert result["torch_threads"] == 2 and torch.get_num_threads() == threads  # 2 while timing, then restored


def test_a_reference_that_computes_something_else_is_not_timed(monkeypatch):
    from benchmarks import parity_speed

    real = parity_speed.ReferenceSDT

    def broken(model):
        reference = real(model)
        reference.weights["teacher"][1].data += 1.0 + torch.arange(TINY.n_classes)  # another bias per class
        return reference

    monkeypatch.setattr(parity_speed, "ReferenceSDT", broken)
    with pytest.raises(AssertionError, match="disagree"):
        side_by_side(TINY, dialogues=2, utterances=5, repeats=1)
