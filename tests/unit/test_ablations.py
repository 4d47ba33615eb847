"""The paper's ablations as model switches: no unimodal gates, concatenation instead of the
multimodal gate, intra-only and inter-only transformers. Parameter counts by hand at D=8."""

import dataclasses

import pytest
import torch

from sdt_ray.config import ModelConfig
from sdt_ray.model import SDT, count_parameters

BASE = ModelConfig(modalities=("text", "audio"), input_dims=(4, 3), hidden=8, heads=2, n_classes=3, max_speakers=2,
                   dropout=0.0, normalize_inputs=False)
# At D=8, 2 modalities: projections 4*8 + 3*8 = 56, speakers (2+1)*8 = 24, a block 448
# (attention 4*(64+8), LayerNorm 16, feed-forward 2*72), a gate 64, a reduction over k
# sources k*64+8, the multimodal gate 64, students 2*(24+3) = 54, teacher 27.
COUNTS = {
    "full": 56 + 24 + 4 * 448 + 4 * 64 + 2 * (128 + 8) + 64 + 54 + 27,  # 2,545
    "no_unimodal_gates": 56 + 24 + 4 * 448 + 2 * (128 + 8) + 64 + 54 + 27,  # 2,289
    "concat_fusion": 56 + 24 + 4 * 448 + 4 * 64 + 2 * (128 + 8) + (16 * 8 + 8) + 54 + 27,  # 2,617: 2D -> D with bias
    "intra_only": 56 + 24 + 2 * 448 + 2 * 64 + 2 * (64 + 8) + 64 + 54 + 27,  # 1,393
    "inter_only": 56 + 24 + 2 * 448 + 2 * 64 + 2 * (64 + 8) + 64 + 54 + 27,  # 1,393
}
SWITCHES = {
    "full": {},
    "no_unimodal_gates": {"unimodal_gates": False},
    "concat_fusion": {"multimodal_gate": False},
    "intra_only": {"transformers": "intra"},
    "inter_only": {"transformers": "inter"},
}


def inputs(seed: int = 0, audio_scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    features = {"text": torch.randn(2, 5, 4, generator=generator),
                "audio": audio_scale * torch.randn(2, 5, 3, generator=generator)}
    speakers = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 2, 2, 2]])  # 2 = padding
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    return features, speakers, mask


def build(name: str) -> SDT:
    torch.manual_seed(0)
    return SDT(dataclasses.replace(BASE, **SWITCHES[name])).eval()


@pytest.mark.parametrize("name", list(SWITCHES))
def test_parameter_counts_by_hand(name):
    assert count_parameters(build(name)) == (COUNTS[name], COUNTS[name])


def test_intra_only_students_read_their_own_modality_alone():
    model = build("intra_only")
    features, speakers, mask = inputs()
    louder = {**features, "audio": 3.0 * features["audio"]}
    a, b = model(features, speakers, mask), model(louder, speakers, mask)
    assert torch.allclose(a.modality_logits["text"], b.modality_logits["text"])  # text never reads audio
    assert not torch.allclose(a.modality_logits["audio"], b.modality_logits["audio"])


def test_inter_only_students_read_the_other_modality():
    model = build("inter_only")
    features, speakers, mask = inputs()
    louder = {**features, "audio": 3.0 * features["audio"]}
    a, b = model(features, speakers, mask), model(louder, speakers, mask)
    assert not torch.allclose(a.modality_logits["text"], b.modality_logits["text"])


def test_concat_fusion_reports_no_weights_and_ignores_an_absent_modality():
    model = build("concat_fusion")
    features, speakers, mask = inputs()
    present = {"text": mask, "audio": torch.zeros_like(mask)}
    other = {**features, "audio": torch.randn(2, 5, 3)}
    a, b = model(features, speakers, mask, present), model(other, speakers, mask, present)
    assert torch.isnan(a.modality_weights).all()
    assert torch.allclose(a.logits[mask], b.logits[mask])


@pytest.mark.parametrize("name,gated", [("full", True), ("no_unimodal_gates", False)])
def test_without_unimodal_gates_the_reduction_reads_the_blocks_as_they_are(name, gated):
    model = build(name)
    seen = {}
    for block in ("text_to_text", "audio_to_text"):
        model.blocks[block].register_forward_hook(lambda m, args, out, block=block: seen.update({block: out}))
    model.reductions["text"].register_forward_hook(lambda m, args, out: seen.update(reduction_input=args[0]))
    model(*inputs())
    raw = torch.cat([seen["text_to_text"], seen["audio_to_text"]], dim=-1)  # (B, L, 2D)
    assert torch.allclose(seen["reduction_input"], raw) is not gated
    assert any(k.startswith("gates.") for k in model.state_dict()) is gated


def test_bad_switches_are_refused():
    with pytest.raises(ValueError, match="transformers must be one of"):
        dataclasses.replace(BASE, transformers="cross")
    with pytest.raises(ValueError, match="inter-modal transformers need at least two modalities"):
        ModelConfig(modalities=("text",), input_dims=(4,), hidden=8, heads=2, transformers="inter")
    with pytest.raises(ValueError, match="frozen_identity_gates needs unimodal_gates"):
        dataclasses.replace(BASE, frozen_identity_gates=True, unimodal_gates=False)
