"""Modality dropout on batches: what it hides, and what it never hides."""

import torch

from sdt_ray.collate import drop_modalities


def test_dropout_hides_about_p_and_never_every_modality_of_an_utterance():
    g = torch.Generator().manual_seed(0)
    present = {"text": torch.ones(64, 50, dtype=torch.bool), "audio": torch.ones(64, 50, dtype=torch.bool)}
    present["audio"][:, 40:] = False  # turns that never had audio
    kept = drop_modalities(present, 0.3, g)
    both = present["text"] & present["audio"]
    assert not (kept["audio"] & ~present["audio"]).any()  # nothing absent comes back
    assert (kept["text"] | kept["audio"]).all()  # every utterance keeps one
    assert kept["text"][~present["audio"]].all()  # a lone modality is never hidden
    # Where both were present: hidden alone with p(1-p) each, both-hidden (p²) restored to both.
    text_hidden = (~kept["text"][both]).float().mean().item()
    assert abs(text_hidden - 0.3 * 0.7) < 0.02


def test_zero_probability_changes_nothing():
    present = {"text": torch.rand(3, 4) > 0.5, "audio": torch.ones(3, 4, dtype=torch.bool)}
    kept = drop_modalities(present, 0.0)
    assert all(torch.equal(kept[m], present[m]) for m in present)
