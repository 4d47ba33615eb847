"""SDT as the reference code computes it (docs/sdt_spec.md §2-§5), in that code's parameter
shapes: Conv1d projections over transposed inputs, packed q/k/v in-projections, `masked_fill`
of padded keys, the attention softmax as its own kernel, and separate matrix products and bias
adds. It holds a copy of our model's weights, so both give the same log-probabilities
(tests/unit/test_parity_forward.py checks it), and `make bench` times the two side by side
(benchmarks/parity_speed.py). Pure torch; the positions table is built once, outside timing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdt_ray.model import SDT

MODS = ("text", "audio", "visual")


def positions(length: int, dim: int) -> torch.Tensor:
    """§2.3: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D))."""
    table = torch.zeros(length, dim)
    for p in range(length):
        for i in range(0, dim, 2):
            angle = p / (10000 ** (i / dim))
            table[p, i] = math.sin(angle)
            table[p, i + 1] = math.cos(angle)
    return table


def port(model: SDT) -> dict:
    """Our state dict in the reference code's shapes (a copy: the two models share nothing)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref = {"speaker": sd["speaker_embedding.weight"], "fusion": sd["fusion.weight"], "teacher": (sd["teacher_head.weight"], sd["teacher_head.bias"])}
    for m in MODS:
        ref[f"conv_{m}"] = sd[f"projections.{m}.weight"].unsqueeze(-1)  # Conv1d weight (D, D_m, 1)
        ref[f"reduce_{m}"] = (sd[f"reductions.{m}.weight"], sd[f"reductions.{m}.bias"])
        ref[f"student_{m}"] = (sd[f"student_heads.{m}.weight"], sd[f"student_heads.{m}.bias"])
        for n in MODS:
            b = f"blocks.{n}_to_{m}."
            ref[f"{n}->{m}"] = {
                "in_proj_weight": torch.cat([sd[b + f"attention.{x}.weight"] for x in ("query", "key", "value")]),  # (3D, D)
                "in_proj_bias": torch.cat([sd[b + f"attention.{x}.bias"] for x in ("query", "key", "value")]),
                "out_proj": (sd[b + "attention.out.weight"], sd[b + "attention.out.bias"]),
                "norm": (sd[b + "ff_norm.weight"], sd[b + "ff_norm.bias"]),
                "w1": (sd[b + "ff_in.weight"], sd[b + "ff_in.bias"]),
                "w2": (sd[b + "ff_out.weight"], sd[b + "ff_out.bias"]),
                "gate": sd[f"gates.{n}_to_{m}.weight"],
            }
    return ref


def _leaves(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree
    return [leaf for item in items for leaf in _leaves(item)]


def reference_layer(p: dict, query: torch.Tensor, source: torch.Tensor, pad: torch.Tensor, heads: int,
                    dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """§3, one layer: MHA with scores QKᵀ/√(D/H), padded keys filled with -1e10, no LayerNorm
    before attention on a first layer, y = dropout(ctx) + x, then
    out = y + dropout(W2 dropout(gelu(W1 LayerNorm(y))))."""
    B, L, D = query.shape
    wq, wk, wv = p["in_proj_weight"].chunk(3)
    bq, bk, bv = p["in_proj_bias"].chunk(3)

    def split(x):
        return x.view(B, L, heads, D // heads).transpose(1, 2)  # (B, H, L, D/H)

    q, k, v = split(query @ wq.T + bq), split(source @ wk.T + bk), split(source @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // heads)  # (B, H, L, L)
    scores = scores.masked_fill(pad[:, None, None, :], -1e10)
    weights = F.dropout(torch.softmax(scores, dim=-1), dropout, training)  # (B, H, L, L)
    ctx = (weights @ v).transpose(1, 2).reshape(B, L, D)
    y = F.dropout(ctx @ p["out_proj"][0].T + p["out_proj"][1], dropout, training) + query
    hidden = F.gelu(F.layer_norm(y, (D,), *p["norm"], eps=1e-6) @ p["w1"][0].T + p["w1"][1], approximate="tanh")
    hidden = F.dropout(hidden, dropout, training)
    return y + F.dropout(hidden @ p["w2"][0].T + p["w2"][1], dropout, training)


class ReferenceSDT:
    """The reference computation holding a copy of `model`'s weights. Weights that are frozen
    in our model (MELD's identity gates) stay frozen here."""

    def __init__(self, model: SDT):
        self.heads, self.dropout = model.config.heads, model.config.dropout
        self.weights = port(model)
        for leaf in _leaves(self.weights):
            leaf.requires_grad_(True)
        for m in MODS:
            for n in MODS:
                self.weights[f"{n}->{m}"]["gate"].requires_grad_(model.gates[f"{n}_to_{m}"].weight.requires_grad)
        self.table = positions(model.config.max_len, model.config.hidden)  # (max_len, D)

    def parameters(self) -> list[torch.Tensor]:
        return [leaf for leaf in _leaves(self.weights) if leaf.requires_grad]

    def __call__(self, x: dict[str, torch.Tensor], speakers: torch.Tensor, mask: torch.Tensor, training: bool = False):
        """§2-§5: fused logits (B, L, C) and per-modality student logits m -> (B, L, C)."""
        ref, p = self.weights, self.dropout
        L = mask.shape[1]
        context = self.table[:L] + ref["speaker"][speakers]  # (B, L, D)
        h = {m: F.conv1d(x[m].transpose(1, 2), ref[f"conv_{m}"]).transpose(1, 2) + context for m in MODS}  # m -> (B, L, D)
        pad = ~mask
        reduced = {}
        for m in MODS:
            gated = []
            for n in [m] + [o for o in MODS if o != m]:  # the intra block first (§4)
                query = F.dropout(h[m], p, training)  # each input with its own dropout mask (§2.3)
                source = query if n == m else F.dropout(h[n], p, training)
                o = reference_layer(ref[f"{n}->{m}"], query, source, pad, self.heads, p, training)
                gated.append(torch.sigmoid(o @ ref[f"{n}->{m}"]["gate"].T) * o)  # o' = sigmoid(W_g o) ⊙ o
            reduced[m] = torch.cat(gated, dim=-1) @ ref[f"reduce_{m}"][0].T + ref[f"reduce_{m}"][1]  # (B, L, D)
        r = torch.stack([reduced[m] for m in MODS], dim=2)  # (B, L, M, D)
        alpha = torch.softmax(r @ ref["fusion"].T, dim=2)  # softmax over m, per feature dimension
        z = (alpha * r).sum(dim=2)  # (B, L, D)
        fused = z @ ref["teacher"][0].T + ref["teacher"][1]  # (B, L, C)
        students = {m: F.dropout(F.relu(reduced[m]), p, training) @ ref[f"student_{m}"][0].T + ref[f"student_{m}"][1]
                    for m in MODS}
        return fused, students
