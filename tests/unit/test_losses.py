"""The self-distillation loss against values worked out by hand."""

import math

import pytest
import torch

from sdt_ray.losses import SelfDistillationLoss, masked_kl
from sdt_ray.schema import IGNORE_LABEL

LN2, LN3 = math.log(2), math.log(3)


def two_dialogues():
    """Dialogue 1 has 2 utterances (labels 0, 1); dialogue 2 has 1 utterance
    (label 1) and one padding slot whose logits are extreme and must not count."""
    fused = torch.tensor([[[0.0, 0.0], [LN3, 0.0]], [[0.0, LN3], [5.0, -5.0]]], requires_grad=True)
    student = torch.tensor([[[LN3, 0.0], [0.0, 0.0]], [[0.0, 0.0], [-9.0, 9.0]]], requires_grad=True)
    labels = torch.tensor([[0, 1], [1, IGNORE_LABEL]])
    mask = torch.tensor([[True, True], [True, False]])
    return fused, {"text": student}, labels, mask


def test_loss_matches_hand_computed_value():
    parts = SelfDistillationLoss()(*two_dialogues())
    # Fused CE: ln2, ln4, ln(4/3) -> mean (5 ln2 - ln3) / 3.
    assert math.isclose(parts.fused_ce.item(), (5 * LN2 - LN3) / 3, rel_tol=1e-6)
    # Student CE: ln(4/3), ln2, ln2 -> (4 ln2 - ln3) / 3.
    assert math.isclose(parts.student_ce.item(), (4 * LN2 - LN3) / 3, rel_tol=1e-6)
    # KL(p_teacher || p_student): (ln2 - ln3/2) + 2 (3/4 ln3 - ln2) -> (ln3 - ln2) / 3.
    assert math.isclose(parts.distillation_kl.item(), (LN3 - LN2) / 3, rel_tol=1e-6)
    assert math.isclose(parts.total.item(), (8 * LN2 - LN3) / 3, rel_tol=1e-6)  # 1.482188


def test_gammas_scale_each_term():
    loss = SelfDistillationLoss(gamma_fused=2.0, gamma_students=0.5, gamma_kl=3.0)
    parts = loss(*two_dialogues())
    expected = 2 * (5 * LN2 - LN3) / 3 + 0.5 * (4 * LN2 - LN3) / 3 + 3 * (LN3 - LN2) / 3
    assert math.isclose(parts.total.item(), expected, rel_tol=1e-6)


def test_class_weights_use_weighted_mean():
    loss = SelfDistillationLoss(class_weights=torch.tensor([1.0, 3.0]))
    parts = loss(*two_dialogues())
    # (1*ln2 + 3*ln4 + 3*ln(4/3)) / (1 + 3 + 3)
    assert math.isclose(parts.fused_ce.item(), (13 * LN2 - 3 * LN3) / 7, rel_tol=1e-6)


def test_detach_teacher_stops_kl_gradient_into_teacher():
    fused, students, labels, mask = two_dialogues()
    SelfDistillationLoss(gamma_fused=0, gamma_students=0, detach_teacher=True)(fused, students, labels, mask).total.backward()
    assert fused.grad is None or torch.count_nonzero(fused.grad) == 0
    assert torch.count_nonzero(students["text"].grad) > 0

    fused, students, labels, mask = two_dialogues()
    SelfDistillationLoss(gamma_fused=0, gamma_students=0)(fused, students, labels, mask).total.backward()
    assert torch.count_nonzero(fused.grad) > 0  # the reference lets it through


def test_padding_gets_no_gradient():
    fused, students, labels, mask = two_dialogues()
    SelfDistillationLoss()(fused, students, labels, mask).total.backward()
    assert torch.count_nonzero(fused.grad[1, 1]) == 0
    assert torch.count_nonzero(students["text"].grad[1, 1]) == 0


def test_temperature_divides_logits_without_t_squared():
    teacher = torch.tensor([[2.0, 0.0]])
    student = torch.tensor([[0.0, 2.0]])
    keep = torch.tensor([True])
    at_t2 = masked_kl(teacher, student, keep, temperature=2.0)
    at_t1_halved = masked_kl(teacher / 2, student / 2, keep, temperature=1.0)
    assert math.isclose(at_t2.item(), at_t1_halved.item(), rel_tol=1e-6)
    # By hand: p = softmax([1, 0]) = (p0, 1 - p0), q = (1 - p0, p0) and ln(p0 / (1 - p0)) = 1,
    # so KL = (2 p0 - 1) * 1 = (e - 1) / (e + 1) = 0.462117; no T^2 factor.
    assert math.isclose(at_t2.item(), (math.e - 1) / (math.e + 1), rel_tol=1e-6)


def test_a_student_skips_utterances_without_its_modality():
    fused, students, labels, mask = two_dialogues()
    present = {"text": torch.tensor([[True, False], [True, True]])}  # no text for dialogue 1's 2nd turn
    parts = SelfDistillationLoss()(fused, students, labels, mask, present)
    # Student CE over (1,1) and (2,1) only: ln(4/3) and ln2.
    assert math.isclose(parts.student_ce.item(), (2 * LN2 - LN3 + LN2) / 2, rel_tol=1e-6)
    # KL over the same two: (ln2 - ln3/2) and (3/4 ln3 - ln2).
    assert math.isclose(parts.distillation_kl.item(), (LN3 / 4) / 2, rel_tol=1e-6)
    assert math.isclose(parts.fused_ce.item(), (5 * LN2 - LN3) / 3, rel_tol=1e-6)  # the teacher still sees all


def test_supervised_contrastive_matches_hand_computed_value():
    """Rows 0 and 1 point the same way (class 0), row 2 at right angles (class 1, alone, so no
    anchor). Anchor 0: cos to its positive 1, to the negative 0, so at τ
    -log(e^(1/τ) / (e^(1/τ) + e^0)) = log(1 + e^(-1/τ)); anchor 1 the same. Lengths do not matter."""
    from sdt_ray.losses import supervised_contrastive

    features = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1])
    assert float(supervised_contrastive(features, labels, 1.0)) == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)
    assert float(supervised_contrastive(features, labels, 0.5)) == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)


def test_supervised_contrastive_averages_over_positives_and_anchors():
    """4 rows, classes [0, 0, 0, 1], unit vectors at 0°, 90°, 180° and 90°, τ = 1. Anchor 0 (cos 0
    to rows 1 and 3, -1 to row 2): denominator e^0 + e^-1 + e^0; its positives 1 and 2 give
    -(1/2)(log(1/d) + log(e^-1/d)) = log d + 1/2. Anchor 1 (cos 0, 0, 1 to rows 0, 2, 3): positives 0
    and 2, d = 2 + e: log d. Anchor 2 mirrors anchor 0. Row 3 has no positive."""
    from sdt_ray.losses import supervised_contrastive

    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    d0, d1 = 2 + math.exp(-1.0), 2 + math.e
    expected = ((math.log(d0) + 0.5) * 2 + math.log(d1)) / 3
    assert float(supervised_contrastive(features, torch.tensor([0, 0, 0, 1]), 1.0)) == pytest.approx(expected, rel=1e-6)


def test_supervised_contrastive_without_pairs_is_zero_with_a_finite_gradient():
    from sdt_ray.losses import supervised_contrastive

    for n in (1, 3):
        features = torch.randn(n, 4, requires_grad=True)
        loss = supervised_contrastive(features, torch.arange(n), 0.3)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(features.grad, torch.zeros(n, 4))
