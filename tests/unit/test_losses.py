"""The self-distillation loss against values worked out by hand."""

import math

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
