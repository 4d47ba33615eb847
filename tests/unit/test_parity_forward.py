"""Parity of the forward pass with sdt_spec §2-§5. The reference (benchmarks/reference_sdt.py) is written from the
spec's formulas, with the reference code's own parameter shapes (Conv1d projections, packed
q/k/v in-projections, masked_fill of padded keys); our model's weights are ported into it, and
both must give the same per-modality and fused log-probabilities to 1e-5."""

import dataclasses

import pytest
import torch

from benchmarks.reference_sdt import MODS, ReferenceSDT, positions
from sdt_ray.config import ModelConfig
from sdt_ray.losses import SelfDistillationLoss
from sdt_ray.model import SDT, sinusoid_table


def parity_config(frozen_gates: bool, speakers: int) -> ModelConfig:
    """The parity shape (jobs/recipes/iemocap.yaml, jobs/recipes/meld.yaml) at a tiny size."""
    return ModelConfig(modalities=MODS, input_dims=(10, 12, 6), hidden=16, heads=4, dropout=0.5, n_classes=5,
                       max_speakers=speakers, speaker_mode="fixed", frozen_identity_gates=frozen_gates,
                       normalize_inputs=False)


@pytest.mark.parametrize("frozen_gates,speakers", [(False, 2), (True, 9)], ids=["iemocap-shape", "meld-shape"])
def test_forward_matches_the_spec_formulas(frozen_gates, speakers):
    torch.manual_seed(0)
    config = parity_config(frozen_gates, speakers)
    model = SDT(config).eval()
    with torch.no_grad():  # random, not default, gates: a frozen identity is also checked as such
        if not frozen_gates:
            for gate in model.gates.values():
                gate.weight.normal_(0.0, 0.3)
    B, L = 3, 6
    generator = torch.Generator().manual_seed(1)
    x = {m: torch.randn(B, L, d, generator=generator) for m, d in zip(MODS, config.input_dims)}
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    speakers_idx = torch.randint(0, speakers, (B, L), generator=generator).masked_fill(~mask, speakers)

    ours = model(x, speakers_idx, mask)
    with torch.no_grad():
        fused, students = ReferenceSDT(model)(x, speakers_idx, mask)
    log_softmax = lambda t: torch.log_softmax(t, -1)[mask]  # noqa: E731
    torch.testing.assert_close(log_softmax(ours.logits), log_softmax(fused), atol=1e-5, rtol=0)
    for m in MODS:
        torch.testing.assert_close(log_softmax(ours.modality_logits[m]), log_softmax(students[m]), atol=1e-5, rtol=0)
    if frozen_gates:
        assert all(torch.equal(g.weight, torch.eye(16)) and not g.weight.requires_grad for g in model.gates.values())


def test_position_table_by_hand():
    table = positions(3, 4)  # D = 4: angles p / 10000^(0/4) and p / 10000^(2/4) = p / 100
    assert table[1, 0].item() == pytest.approx(0.841471, abs=1e-6)  # sin(1)
    assert table[1, 1].item() == pytest.approx(0.540302, abs=1e-6)  # cos(1)
    assert table[2, 2].item() == pytest.approx(0.019999, abs=1e-6)  # sin(0.02)
    torch.testing.assert_close(sinusoid_table(3, 4), table)


def test_a_training_step_matches_without_dropout():
    """With dropout 0 the reference's training step is ours: the same loss and the same gradients
    on the ported weights (what `make bench` times as the reference's train step)."""
    torch.manual_seed(0)
    config = dataclasses.replace(parity_config(frozen_gates=True, speakers=9), dropout=0.0)
    model = SDT(config).train()
    reference = ReferenceSDT(model)
    generator = torch.Generator().manual_seed(2)
    x = {m: torch.randn(2, 5, d, generator=generator) for m, d in zip(MODS, config.input_dims)}
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    speakers = torch.randint(0, 9, (2, 5), generator=generator).masked_fill(~mask, 9)
    labels = torch.randint(0, 5, (2, 5), generator=generator)
    loss_fn = SelfDistillationLoss(temperature=8.0)

    out = model(x, speakers, mask)
    ours = loss_fn(out.logits, out.modality_logits, labels, mask).total
    ours.backward()
    fused, students = reference(x, speakers, mask, training=True)
    theirs = loss_fn(fused, students, labels, mask).total
    theirs.backward()
    assert theirs.item() == pytest.approx(ours.item(), abs=1e-5)
    torch.testing.assert_close(reference.weights["teacher"][0].grad, model.teacher_head.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reference.weights["conv_audio"].grad.squeeze(-1), model.projections["audio"].weight.grad,
                               atol=1e-5, rtol=1e-4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # the frozen gates stay frozen in both
    assert sum(p.numel() for p in reference.parameters()) == trainable
