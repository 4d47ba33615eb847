"""SDT (Ma et al., IEEE TMM 2023), pure PyTorch, as the authors' code computes it.

Shapes: B dialogues, L utterances (padded), D hidden size, C classes, M modalities.
See docs/sdt_spec.md for the equations; section numbers below refer to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

MASKED_SCORE = -1e10  # the reference fills padded keys with this, not -inf


@dataclass
class SDTOutput:
    logits: torch.Tensor  # (B, L, C) fused teacher logits; argmax is the prediction
    modality_logits: dict[str, torch.Tensor]  # modality -> (B, L, C) student logits
    modality_weights: torch.Tensor  # (B, L, M) gate weights α, averaged over D; sums to 1 over M, 0 where absent


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """The original Transformer's position table: sin on even dims, cos on odd (§2.3)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return table  # (max_len, D)


class CrossAttention(nn.Module):
    """Multi-head attention, query from the target, key/value from the source (§3)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(
        self, target: torch.Tensor, source: torch.Tensor, key_bias: torch.Tensor, has_keys: torch.Tensor
    ) -> torch.Tensor:
        B, L, D = target.shape
        H = self.heads
        q = self.query(target).view(B, L, H, D // H).transpose(1, 2)  # (B, H, L, D/H)
        k = self.key(source).view(B, L, H, D // H).transpose(1, 2)  # (B, H, L, D/H)
        v = self.value(source).view(B, L, H, D // H).transpose(1, 2)  # (B, H, L, D/H)
        # key_bias (B, 1, 1, L): 0 for real keys, MASKED_SCORE for padding and absent ones.
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_bias, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, D/H)
        # A dialogue where the source modality is absent throughout has nothing to attend to:
        # its softmax over all-masked keys would average padding, so it reads nothing instead.
        ctx = ctx * has_keys[:, None, None, None]  # has_keys (B,) 1.0 or 0.0
        return self.out(ctx.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class TransformerBlock(nn.Module):
    """One-layer TransformerEncoder of the reference (§3): post-residual attention
    with no LayerNorm on a first layer, then a pre-norm GELU feed-forward, d_ff = D."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention = CrossAttention(dim, heads, dropout)
        self.ff_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ff_in = nn.Linear(dim, dim)
        self.ff_out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, target: torch.Tensor, source: torch.Tensor, key_bias: torch.Tensor, has_keys: torch.Tensor
    ) -> torch.Tensor:
        y = self.drop(self.attention(target, source, key_bias, has_keys)) + target  # (B, L, D)
        hidden = self.drop(F.gelu(self.ff_in(self.ff_norm(y)), approximate="tanh"))  # (B, L, D)
        return y + self.drop(self.ff_out(hidden))  # (B, L, D)


class FeatureNorm(nn.Module):
    """(x - mean) / std per input dim; statistics are buffers set from training data."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-3) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=min_std))  # some encoder dims are constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SDT(nn.Module):
    """Intra- and inter-modal transformers, hierarchical gated fusion and
    self-distillation heads, for any non-empty subset of {text, audio, visual}."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.input_dims:
            raise ValueError("ModelConfig.input_dims must be set to build a model")
        self.config = config
        D, mods = config.hidden, config.modalities
        self.input_norms = (
            nn.ModuleDict({m: FeatureNorm(config.input_dim(m)) for m in mods}) if config.normalize_inputs else None
        )
        self.projections = nn.ModuleDict(
            {m: nn.Linear(config.input_dim(m), D, bias=False) for m in mods}
        )  # Conv1d(kernel 1, no bias) in the reference: the same per-utterance map
        self.speaker_embedding = nn.Embedding(config.max_speakers + 1, D, padding_idx=config.max_speakers)
        self.register_buffer("positions", sinusoid_table(config.max_len, D), persistent=False)
        self.embed_dropout = nn.Dropout(config.dropout)
        # Block "a_to_t" reads audio (source) to update text (target); intra blocks first.
        self.sources = {tgt: _sources(tgt, mods, config.transformers) for tgt in mods}
        self.pairs = [(src, tgt) for tgt in mods for src in self.sources[tgt]]
        self.blocks = nn.ModuleDict(
            {_pair_name(s, t): TransformerBlock(D, config.heads, config.dropout) for s, t in self.pairs}
        )
        self.gates = nn.ModuleDict(
            {_pair_name(s, t): nn.Linear(D, D, bias=False) for s, t in self.pairs} if config.unimodal_gates else {}
        )
        if config.frozen_identity_gates:
            for gate in self.gates.values():
                nn.init.eye_(gate.weight)
                gate.weight.requires_grad_(False)
        self.reductions = nn.ModuleDict({m: nn.Linear(len(self.sources[m]) * D, D) for m in mods})
        # With one modality the softmax over M is identically 1: no fusion weights to learn.
        self.fusion = nn.Linear(D, D, bias=False) if len(mods) > 1 and config.multimodal_gate else None
        # The ablation without the multimodal gate: concatenate the M vectors, then a linear layer.
        self.concat_fusion = nn.Linear(len(mods) * D, D) if len(mods) > 1 and not config.multimodal_gate else None
        self.student_heads = nn.ModuleDict({m: nn.Linear(D, config.n_classes) for m in mods})
        self.student_dropout = nn.Dropout(config.dropout)
        self.teacher_head = nn.Linear(D, config.n_classes)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        speakers: torch.Tensor,
        mask: torch.Tensor,
        present: dict[str, torch.Tensor] | None = None,
    ) -> SDTOutput:
        """features: modality -> (B, L, D_m); speakers: (B, L) long, padding = max_speakers;
        mask: (B, L) bool, True for real utterances; present: modality -> (B, L) bool, False
        where an utterance lacks that modality (no transcript for a turn, a segment too short).
        An absent modality is no key in any attention and gets α = 0 in the fusion, so what its
        (zero-filled) vector holds never reaches the output. Default: all present."""
        cfg = self.config
        B, L = mask.shape
        if L > cfg.max_len:
            raise ValueError(f"dialogue of {L} utterances exceeds max_len={cfg.max_len}; score it in windows")
        missing = [m for m in cfg.modalities if m not in features]
        if missing:
            raise ValueError(f"model needs modalities {list(cfg.modalities)}; missing {missing}")
        present = {m: mask if present is None or m not in present else present[m] & mask for m in cfg.modalities}
        dtype = features[cfg.modalities[0]].dtype
        zeros = torch.zeros(B, 1, 1, L, dtype=dtype, device=mask.device)
        key_bias = {m: zeros.masked_fill(~present[m][:, None, None, :], MASKED_SCORE) for m in cfg.modalities}
        has_keys = {m: present[m].any(dim=1).to(dtype) for m in cfg.modalities}  # m -> (B,)
        context = self.positions[:L] + self.speaker_embedding(speakers)  # (B, L, D)
        if self.input_norms is not None:
            features = {m: self.input_norms[m](features[m]) for m in cfg.modalities}
        projected = {m: self.projections[m](features[m]) for m in cfg.modalities}  # m -> (B, L, D)

        gated: dict[tuple[str, str], torch.Tensor] = {}
        for src, tgt in self.pairs:
            name = _pair_name(src, tgt)
            target = self.embed_dropout(projected[tgt] + context)  # (B, L, D)
            source = target if src == tgt else self.embed_dropout(projected[src] + context)
            o = self.blocks[name](target, source, key_bias[src], has_keys[src])  # (B, L, D)
            gated[src, tgt] = torch.sigmoid(self.gates[name](o)) * o if self.gates else o  # unimodal gate (§4)

        reduced = [
            self.reductions[tgt](torch.cat([gated[src, tgt] for src in self.sources[tgt]], dim=-1))
            for tgt in cfg.modalities
        ]  # M x (B, L, D)
        stacked = torch.stack(reduced, dim=2)  # (B, L, M, D)
        absent = mask[..., None] & ~torch.stack([present[m] for m in cfg.modalities], dim=2)  # (B, L, M)
        if self.concat_fusion is not None:
            # No α to report: the concatenation weighs nothing explicitly (NaN in modality_weights).
            kept = stacked.masked_fill(absent[..., None], 0.0)  # (B, L, M, D), an absent modality adds nothing
            fused = self.concat_fusion(kept.flatten(2))  # (B, L, D)
            alpha = torch.full_like(stacked, float("nan"))  # (B, L, M, D)
        elif self.fusion is None:
            alpha = torch.ones_like(stacked)  # (B, L, 1, D)
            fused = stacked.sum(dim=2)  # (B, L, D)
        else:
            scores = self.fusion(stacked).masked_fill(absent[..., None], MASKED_SCORE)  # (B, L, M, D)
            alpha = torch.softmax(scores, dim=2)  # (B, L, M, D), softmax over M per dim; 0 where absent
            fused = (alpha * stacked).sum(dim=2)  # (B, L, D)

        modality_logits = {
            m: self.student_heads[m](self.student_dropout(F.relu(reduced[i])))
            for i, m in enumerate(cfg.modalities)
        }  # m -> (B, L, C)
        return SDTOutput(
            logits=self.teacher_head(fused),  # (B, L, C)
            modality_logits=modality_logits,
            modality_weights=alpha.mean(dim=-1),  # (B, L, M)
        )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _intra_first(target: str, modalities: tuple[str, ...]) -> list[str]:
    """Sources feeding `target`: itself first, then the others in canonical order (§4)."""
    return [target] + [m for m in modalities if m != target]


def _sources(target: str, modalities: tuple[str, ...], transformers: str) -> list[str]:
    """The sources a model keeps for `target`: all (both), itself (intra) or the others (inter)."""
    keep = {"both": lambda s: True, "intra": lambda s: s == target, "inter": lambda s: s != target}[transformers]
    return [s for s in _intra_first(target, modalities) if keep(s)]


def _pair_name(source: str, target: str) -> str:
    return f"{source}_to_{target}"
