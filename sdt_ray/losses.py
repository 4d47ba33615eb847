"""The self-distillation loss of SDT (sdt_spec §6), with masked reductions.

    L = γ1·CE(fused, y) + γ2·Σ_m CE(student_m, y) + γ3·Σ_m KL(softmax(fused/T) ‖ softmax(student_m/T))

Every term averages over real, labelled utterances only; a student's terms also
leave out the utterances that lack its modality. There is no T² factor on the KL
term, as in the reference.

`supervised_contrastive` is `finetune-text --contrastive`'s term, not SDT's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .schema import IGNORE_LABEL


@dataclass
class LossParts:
    total: torch.Tensor  # scalar, what backward() runs on
    fused_ce: torch.Tensor  # scalar, before γ1
    student_ce: torch.Tensor  # scalar, Σ over modalities, before γ2
    distillation_kl: torch.Tensor  # scalar, Σ over modalities, before γ3

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items()}


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean CE over masked positions; with class weights Σ w_y·CE / Σ w_y.

    logits (N, C), labels (N,), mask (N,) bool.
    """
    safe_labels = labels.clamp(min=0)  # (N,) any index is fine where masked out
    ce = F.cross_entropy(logits, safe_labels, reduction="none")  # (N,)
    weights = mask.to(logits.dtype)  # (N,)
    if class_weights is not None:
        weights = weights * class_weights[safe_labels]
    return (ce * weights).sum() / weights.sum().clamp(min=torch.finfo(logits.dtype).tiny)


def masked_kl(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)), summed over classes, mean over masked rows.

    teacher_logits, student_logits (N, C), mask (N,) bool.
    """
    teacher_log_p = F.log_softmax(teacher_logits / temperature, dim=-1)  # (N, C)
    student_log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (N, C)
    kl = (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(dim=-1)  # (N,)
    weights = mask.to(kl.dtype)
    return (kl * weights).sum() / weights.sum().clamp(min=1.0)


class SelfDistillationLoss(nn.Module):
    def __init__(
        self,
        gamma_fused: float = 1.0,
        gamma_students: float = 1.0,
        gamma_kl: float = 1.0,
        temperature: float = 1.0,
        class_weights: torch.Tensor | None = None,
        detach_teacher: bool = False,
    ):
        super().__init__()
        self.gamma_fused = gamma_fused
        self.gamma_students = gamma_students
        self.gamma_kl = gamma_kl
        self.temperature = temperature
        self.detach_teacher = detach_teacher
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(
        self,
        fused_logits: torch.Tensor,
        student_logits: dict[str, torch.Tensor],
        labels: torch.Tensor,
        mask: torch.Tensor,
        present: dict[str, torch.Tensor] | None = None,
    ) -> LossParts:
        """fused_logits (B, L, C); student_logits m -> (B, L, C); labels (B, L) with
        IGNORE_LABEL where unlabelled; mask (B, L) bool, True for real utterances;
        present m -> (B, L) bool, False where the utterance lacks modality m."""
        C = fused_logits.shape[-1]
        fused = fused_logits.reshape(-1, C)  # (N, C)
        y = labels.reshape(-1)  # (N,)
        keep = mask.reshape(-1) & (y != IGNORE_LABEL)  # (N,)
        teacher = fused.detach() if self.detach_teacher else fused

        fused_ce = masked_cross_entropy(fused, y, keep, self.class_weights)
        zero = fused.new_zeros(())
        student_ce, kl = zero, zero
        for m, logits in student_logits.items():
            student = logits.reshape(-1, C)  # (N, C)
            has_m = keep if present is None or m not in present else keep & present[m].reshape(-1)  # (N,)
            student_ce = student_ce + masked_cross_entropy(student, y, has_m, self.class_weights)
            kl = kl + masked_kl(teacher, student, has_m, self.temperature)
        total = self.gamma_fused * fused_ce + self.gamma_students * student_ce + self.gamma_kl * kl
        return LossParts(total=total, fused_ce=fused_ce, student_ce=student_ce, distillation_kl=kl)


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out; Gunel et al. 2021 add it to a
    fine-tuning CE). z the L2-normalised rows, P(i) the other rows of i's class:

        L = mean over i with P(i) non-empty of  -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) )

    It pulls an utterance's vector towards those of its class in the batch and away from the
    others: the vectors `extract` hands SDT, rather than only the head's logits, learn the classes.
    0, with a zero gradient, when no row shares its class with another.

    features (N, H), labels (N,) class ids.
    """
    n = features.shape[0]
    itself = torch.eye(n, dtype=torch.bool, device=features.device)  # (N, N)
    positives = (labels[:, None] == labels[None, :]) & ~itself  # (N, N)
    n_positives = positives.sum(dim=1)  # (N,)
    anchors = n_positives > 0  # (N,)
    if not bool(anchors.any()):  # also N = 1, whose only logit would be -inf below
        return features.sum() * 0.0
    z = F.normalize(features.float(), dim=-1)  # (N, H)
    similarity = (z @ z.T / temperature).masked_fill(itself, float("-inf"))  # (N, N)
    log_p = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)  # (N, N), -inf on the diagonal
    per_anchor = -log_p.masked_fill(~positives, 0.0).sum(dim=1) / n_positives.clamp(min=1)  # (N,)
    return per_anchor[anchors].mean()
