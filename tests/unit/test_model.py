"""SDT on tiny configs: shapes, masking, gates and parameter counts."""

import itertools

import pytest
import torch

from sdt_ray.config import MODALITIES, ModelConfig
from sdt_ray.model import SDT, count_parameters, sinusoid_table

DIMS = {"text": 6, "audio": 5, "visual": 4}
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(MODALITIES, r)]


def tiny(modalities=MODALITIES, **kw) -> ModelConfig:
    return ModelConfig(
        modalities=modalities, input_dims=tuple(DIMS[m] for m in modalities),
        hidden=8, heads=2, n_classes=3, max_speakers=4, **kw,
    )


def inputs(config: ModelConfig, B=2, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(B, L, config.input_dim(m), generator=g) for m in config.modalities}
    speakers = torch.randint(0, config.max_speakers, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    return features, speakers, mask


@pytest.mark.parametrize("modalities", SUBSETS, ids=lambda s: "+".join(s))
def test_shapes_for_every_modality_subset(modalities):
    config = tiny(modalities)
    out = SDT(config)(*inputs(config))
    assert out.logits.shape == (2, 5, 3)
    assert set(out.modality_logits) == set(modalities)
    assert all(v.shape == (2, 5, 3) for v in out.modality_logits.values())
    assert out.modality_weights.shape == (2, 5, len(modalities))
    assert len(SDT(config).blocks) == len(modalities) ** 2


@pytest.mark.parametrize("modalities", [("text",), ("text", "audio", "visual")], ids=["text", "all"])
def test_padding_does_not_change_real_logits(modalities):
    config = tiny(modalities)
    torch.manual_seed(0)
    model = SDT(config).eval()
    features, speakers, mask = inputs(config, B=1, L=3)
    alone = model(features, speakers, mask).logits  # (1, 3, C)

    # The same dialogue padded to 7 slots, next to another, longer dialogue.
    padded_features = {m: torch.randn(2, 7, x.shape[-1]) * 100 for m, x in features.items()}
    for m, x in features.items():
        padded_features[m][0, :3] = x[0]
    padded_speakers = torch.randint(0, config.max_speakers, (2, 7))
    padded_speakers[0, :3] = speakers[0]
    padded_speakers[0, 3:] = config.max_speakers  # the padding index
    padded_mask = torch.ones(2, 7, dtype=torch.bool)
    padded_mask[0, 3:] = False
    batched = model(padded_features, padded_speakers, padded_mask).logits
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("modalities", SUBSETS, ids=lambda s: "+".join(s))
def test_gate_weights_sum_to_one_over_modalities(modalities):
    config = tiny(modalities)
    out = SDT(config).eval()(*inputs(config))
    sums = out.modality_weights.sum(dim=-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-6, rtol=0)
    assert (out.modality_weights >= 0).all()


def test_text_only_model_has_no_idle_parameters():
    model = SDT(tiny(("text",)))
    assert model.fusion is None
    D, d_in, C, S = 8, 6, 3, 4
    block = 4 * (D * D + D) + 2 * (D * D + D) + 2 * D  # attention q/k/v/out, ff in/out, ff LayerNorm
    expected = (
        d_in * D  # projection, no bias
        + (S + 1) * D  # speaker table with the padding row
        + block
        + D * D  # unimodal gate, no bias
        + (D * D + D)  # reduction Linear(1*D -> D)
        + 2 * (D * C + C)  # student head + teacher head
    )
    assert count_parameters(model) == (expected, expected)
    # Every parameter takes part in the loss: no gradient is None after backward.
    config = model.config
    out = model(*inputs(config))
    (out.logits.sum() + sum(v.sum() for v in out.modality_logits.values())).backward()
    idle = [n for n, p in model.named_parameters() if p.grad is None]
    assert idle == []


def test_frozen_identity_gates_act_as_silu():
    config = tiny(frozen_identity_gates=True)
    model = SDT(config)
    total, trainable = count_parameters(model)
    assert total - trainable == 9 * 8 * 8
    gate = model.gates["text_to_text"]
    o = torch.randn(4, 8)
    torch.testing.assert_close(torch.sigmoid(gate(o)) * o, torch.nn.functional.silu(o))


def test_sinusoid_table_values():
    table = sinusoid_table(4, 4)
    # position 1: sin(1), cos(1), sin(1/100), cos(1/100) for dim 4 (base 10000)
    expected = torch.tensor([0.841471, 0.540302, 0.010000, 0.999950])
    torch.testing.assert_close(table[1], expected, atol=1e-5, rtol=0)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_too_long_dialogue_is_a_clear_error():
    config = tiny(("text",), max_len=4)
    with pytest.raises(ValueError, match="exceeds max_len"):
        SDT(config)(*inputs(config, L=5))


def test_config_rejects_bad_subsets():
    with pytest.raises(ValueError, match="non-empty"):
        ModelConfig(modalities=(), input_dims=())
    with pytest.raises(ValueError, match="order"):
        ModelConfig(modalities=("audio", "text"), input_dims=(1, 2))
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(input_dims=(4,), hidden=10, heads=3)


def test_input_standardisation_uses_stored_statistics():
    config = tiny(("text",))
    model = SDT(config).eval()
    mean, std = torch.arange(6.0), torch.tensor([1.0, 2.0, 0.0, 4.0, 5.0, 6.0])
    model.input_norms["text"].set_statistics(mean, std)
    x = torch.ones(1, 1, 6) * 3.0
    expected = (x - mean) / std.clamp(min=1e-3)
    torch.testing.assert_close(model.input_norms["text"](x), expected)
    # The statistics are buffers: saved with the weights, not trained.
    assert "input_norms.text.mean" in model.state_dict()
    assert all("input_norms" not in name for name, _ in model.named_parameters())


def test_parity_switches_build_the_reference_shape():
    config = tiny(normalize_inputs=False)
    assert SDT(config).input_norms is None


def test_saved_state_is_a_snapshot_not_a_view():
    from sdt_ray.checkpoint import state_dict_for_saving

    model = SDT(tiny(("text",)))
    saved = state_dict_for_saving(model)
    before = saved["teacher_head.weight"].clone()
    with torch.no_grad():
        model.teacher_head.weight.add_(1.0)  # a later training step
    assert torch.equal(saved["teacher_head.weight"], before)


def absent_pattern(B=3, L=6, seed=1):
    """present m -> (B, L): random absences, at least one modality per utterance, and in
    dialogue 2 the audio absent throughout."""
    g = torch.Generator().manual_seed(seed)
    present = {m: torch.rand(B, L, generator=g) > 0.4 for m in MODALITIES}
    present["audio"][2] = False
    nothing = ~(present["text"] | present["audio"] | present["visual"])
    present["text"] = present["text"] | nothing
    return present


def test_absent_modality_gets_no_weight_and_the_present_ones_sum_to_one():
    config = tiny()
    features, speakers, mask = inputs(config, B=3, L=6)
    present = absent_pattern()
    alpha = SDT(config).eval()(features, speakers, mask, present).modality_weights  # (B, L, M)
    stacked = torch.stack([present[m] for m in config.modalities], dim=-1)  # (B, L, M)
    assert (alpha[~stacked] == 0).all()  # exactly: exp underflows to 0
    sums = (alpha * stacked).sum(dim=-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-6, rtol=0)


def test_what_an_absent_vector_holds_never_reaches_the_output():
    config = tiny()
    torch.manual_seed(0)
    model = SDT(config).eval()
    features, speakers, mask = inputs(config, B=3, L=6)
    present = absent_pattern()
    out = model(features, speakers, mask, present)
    garbage = {m: torch.where(present[m][..., None], x, torch.randn_like(x) * 1e3) for m, x in features.items()}
    again = model(garbage, speakers, mask, present)
    torch.testing.assert_close(again.logits, out.logits, atol=1e-5, rtol=0)
    for m in config.modalities:  # a student's logits matter only where its modality is present
        torch.testing.assert_close(again.modality_logits[m][present[m]], out.modality_logits[m][present[m]],
                                   atol=1e-5, rtol=0)
    zero_filled = model({m: torch.where(present[m][..., None], x, 0.0) for m, x in features.items()},
                        speakers, mask)  # the same zeros read as data, without the mask
    assert (zero_filled.logits - out.logits).abs().max() > 1e-3


def test_all_present_is_the_unmasked_model():
    config = tiny()
    model = SDT(config).eval()
    features, speakers, mask = inputs(config)
    plain = model(features, speakers, mask)
    masked = model(features, speakers, mask, {m: torch.ones_like(mask) for m in config.modalities})
    assert torch.equal(plain.logits, masked.logits) and torch.equal(plain.modality_weights, masked.modality_weights)
