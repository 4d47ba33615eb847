"""Parity of the forward pass with sdt_spec §2-§5. The reference is written here from the
spec's formulas, with the reference code's own parameter shapes (Conv1d projections, packed
q/k/v in-projections, masked_fill of padded keys); our model's weights are ported into it, and
both must give the same per-modality and fused log-probabilities to 1e-5."""

import math

import pytest
import torch
import torch.nn.functional as F

from sdt_ray.config import ModelConfig
from sdt_ray.model import SDT

MODS = ("text", "audio", "visual")


def parity_config(frozen_gates: bool, speakers: int) -> ModelConfig:
    """The parity shape (jobs/iemocap.yaml, jobs/meld.yaml) at a tiny size."""
    return ModelConfig(modalities=MODS, input_dims=(10, 12, 6), hidden=16, heads=4, dropout=0.5, n_classes=5,
                       max_speakers=speakers, speaker_mode="fixed", frozen_identity_gates=frozen_gates,
                       normalize_inputs=False)


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
    """Our state dict in the reference code's shapes."""
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


def reference_layer(p: dict, query: torch.Tensor, source: torch.Tensor, pad: torch.Tensor, heads: int) -> torch.Tensor:
    """§3, one layer: MHA with scores QKᵀ/√(D/H), padded keys filled with -1e10, no LayerNorm
    before attention on a first layer, y = ctx + x, then out = y + W2 gelu(W1 LayerNorm(y))."""
    B, L, D = query.shape
    wq, wk, wv = p["in_proj_weight"].chunk(3)
    bq, bk, bv = p["in_proj_bias"].chunk(3)

    def split(x):
        return x.view(B, L, heads, D // heads).transpose(1, 2)  # (B, H, L, D/H)

    q, k, v = split(query @ wq.T + bq), split(source @ wk.T + bk), split(source @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // heads)  # (B, H, L, L)
    scores = scores.masked_fill(pad[:, None, None, :], -1e10)
    ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, L, D)
    y = ctx @ p["out_proj"][0].T + p["out_proj"][1] + query
    hidden = F.gelu(F.layer_norm(y, (D,), *p["norm"], eps=1e-6) @ p["w1"][0].T + p["w1"][1], approximate="tanh")
    return y + hidden @ p["w2"][0].T + p["w2"][1]


def reference_forward(ref: dict, x: dict, speakers: torch.Tensor, mask: torch.Tensor, heads: int):
    """§2-§5 in eval mode: log-probabilities of the teacher and of each student."""
    L = mask.shape[1]
    D = ref["speaker"].shape[1]
    context = positions(L, D) + ref["speaker"][speakers]  # (B, L, D)
    h = {m: F.conv1d(x[m].transpose(1, 2), ref[f"conv_{m}"]).transpose(1, 2) + context for m in MODS}
    pad = ~mask
    reduced = {}
    for m in MODS:
        gated = []
        for n in [m] + [o for o in MODS if o != m]:  # the intra block first (§4)
            o = reference_layer(ref[f"{n}->{m}"], h[m], h[n], pad, heads)
            gated.append(torch.sigmoid(o @ ref[f"{n}->{m}"]["gate"].T) * o)  # o' = sigmoid(W_g o) ⊙ o
        reduced[m] = torch.cat(gated, dim=-1) @ ref[f"reduce_{m}"][0].T + ref[f"reduce_{m}"][1]
    r = torch.stack([reduced[m] for m in MODS], dim=2)  # (B, L, M, D)
    alpha = torch.softmax(r @ ref["fusion"].T, dim=2)  # softmax over m, per feature dimension
    z = (alpha * r).sum(dim=2)
    fused = torch.log_softmax(z @ ref["teacher"][0].T + ref["teacher"][1], dim=-1)
    students = {m: torch.log_softmax(F.relu(reduced[m]) @ ref[f"student_{m}"][0].T + ref[f"student_{m}"][1], dim=-1)
                for m in MODS}
    return fused, students


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
        fused, students = reference_forward(port(model), x, speakers_idx, mask, config.heads)
    torch.testing.assert_close(torch.log_softmax(ours.logits, -1)[mask], fused[mask], atol=1e-5, rtol=0)
    for m in MODS:
        torch.testing.assert_close(torch.log_softmax(ours.modality_logits[m], -1)[mask], students[m][mask], atol=1e-5, rtol=0)
    if frozen_gates:
        assert all(torch.equal(g.weight, torch.eye(16)) and not g.weight.requires_grad for g in model.gates.values())
