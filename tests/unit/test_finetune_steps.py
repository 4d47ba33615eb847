"""Fine-tuning's step without Ray: frozen lower layers and gradient accumulation, on a tiny
random BERT and MPNet."""

import pyarrow as pa
import pytest
import torch

from sdt_ray.errors import ConfigError
from sdt_ray.text_classifier import UtteranceClassifier, freeze_lower_layers, layer_index
from sdt_ray.finetune import FinetuneOptions, _accumulated_step


class WordTokenizer:
    """Enough of a tokenizer for `tokenize`: one id per word, padded; no context segment."""

    def __call__(self, texts, contexts=None, padding=True, truncation=True, max_length=16, return_tensors="pt"):
        ids = [[1 + (hash(w) % 40) for w in t.split()][:max_length] for t in texts]
        width = max(len(i) for i in ids)
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                              "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])})


def tiny(kind: str, layers: int = 3) -> UtteranceClassifier:
    torch.manual_seed(0)
    if kind == "bert":
        from transformers import BertConfig, BertModel

        encoder = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                                       intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    else:
        from transformers import MPNetConfig, MPNetModel

        encoder = MPNetModel(MPNetConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                                         intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return UtteranceClassifier(encoder, n_classes=3, dropout=0.0)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_frozen_layers_get_no_gradient_and_the_layers_above_do(kind):
    classifier = tiny(kind)
    freeze_lower_layers(classifier.encoder, 2)
    tokens = WordTokenizer()(["a b c", "d e"])
    classifier(tokens, tokens["attention_mask"]).logits.sum().backward()
    learning = {n for n, p in classifier.encoder.named_parameters() if p.requires_grad}
    assert learning and all(n.startswith("encoder.layer.2.") for n in learning)
    assert all(p.grad is not None for n, p in classifier.encoder.named_parameters() if n in learning)
    assert all(p.grad is None for n, p in classifier.encoder.named_parameters() if n not in learning)
    assert classifier.head.weight.grad is not None
    if kind == "mpnet":  # the shared position bias feeds every layer: frozen with the lower ones
        assert not classifier.encoder.encoder.relative_attention_bias.weight.requires_grad
    with pytest.raises(ConfigError, match="has 3 layers"):
        freeze_lower_layers(tiny(kind).encoder, 4)


def test_layer_index_reads_the_layer_from_encoder_and_classifier_names():
    assert layer_index("encoder.layer.0.attention.self.query.weight") == 0
    assert layer_index("encoder.encoder.layer.11.output.dense.bias") == 11  # as the classifier names it
    assert layer_index("encoder.relative_attention_bias.weight") is None  # MPNet's, shared by all layers
    assert layer_index("embeddings.word_embeddings.weight") is None
    assert layer_index("head.weight") is None
    assert layer_index("decoder.layer.3.weight") is None and layer_index("xencoder.layer.3.w") is None


def test_accumulated_micro_batches_give_the_whole_batch_gradient():
    batch = pa.table({"text": ["a b c", "d", "e f", "g h i j", "k"], "text_context": [""] * 5, "label_id": [0, 1, 2, 1, 0]})
    grads, losses = [], []
    for accumulate in (1, 2, 5):
        classifier = tiny("bert")
        loss = _accumulated_step(classifier, WordTokenizer(), batch, FinetuneOptions(accumulate=accumulate), "cpu")
        grads.append(torch.cat([p.grad.flatten() for p in classifier.parameters() if p.grad is not None]))
        losses.append(loss)
    # 5 rows in 2 micro-batches of 3 and 2, each weighted by its share: the same mean loss and gradient
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    assert torch.allclose(grads[1], grads[0], atol=1e-6) and torch.allclose(grads[2], grads[0], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_ddp_averages_once_per_step_on_the_last_micro_batch():
    """Under DDP, all micro-batches but the last run inside no_sync; the last one syncs."""
    import contextlib

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.syncing, self.calls = inner, True, []

        @contextlib.contextmanager
        def no_sync(self):
            self.syncing = False
            yield
            self.syncing = True

        def forward(self, tokens, mask):
            self.calls.append(self.syncing)
            return self.inner(tokens, mask)

    batch = pa.table({"text": ["a b", "c", "d e f", "g", "h i"], "text_context": [""] * 5, "label_id": [0, 1, 2, 0, 1]})
    model = Recording(tiny("bert"))
    _accumulated_step(model, WordTokenizer(), batch, FinetuneOptions(accumulate=3), "cpu")
    assert model.calls == [False, False, True]


def test_a_bf16_step_multiplies_in_bfloat16_and_keeps_fp32_weights_and_gradients():
    """--precision bf16: the head's product comes out in bfloat16 (autocast), while the weights
    and their gradients stay fp32 and point where the fp32 step's do, up to bfloat16's 8 bits."""
    batch = pa.table({"text": ["a b c", "d", "e f", "g h i j"], "text_context": [""] * 4, "label_id": [0, 1, 2, 1]})
    grads, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        classifier = tiny("bert")
        classifier.head.register_forward_hook(lambda module, args, out: dtypes.__setitem__(precision, out.dtype))
        _accumulated_step(classifier, WordTokenizer(), batch, FinetuneOptions(precision=precision), "cpu")
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in classifier.parameters() if p.grad is not None)
        grads[precision] = torch.cat([p.grad.flatten() for p in classifier.parameters() if p.grad is not None])
    assert dtypes == {"fp32": torch.float32, "bf16": torch.bfloat16}
    assert not torch.equal(grads["bf16"], grads["fp32"])
    assert torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0) > 0.99


def test_a_window_step_in_micro_batches_gives_the_whole_steps_gradient():
    """Three dialogue windows holding 2, 1 and 3 labelled turns: split into 1, 2 or 3 groups of
    windows, the step's loss and gradient are the same (each group weighted by its targets)."""
    from sdt_ray.finetune import _window_step
    from sdt_ray.windows import Window

    windows = [Window([30, 5, 31, 6, 6, 31], [(1, 2), (3, 5)], [0, 2]), Window([30, 7, 31], [(1, 2)], [1]),
               Window([30, 8, 31, 9, 31, 10, 11, 31], [(1, 2), (3, 4), (5, 7)], [2, 1, 0])]
    grads, losses = [], []
    for accumulate in (1, 2, 3):
        classifier = tiny("bert")
        losses.append(_window_step(classifier, windows, FinetuneOptions(accumulate=accumulate), pad=0, device="cpu"))
        grads.append(torch.cat([p.grad.flatten() for p in classifier.parameters() if p.grad is not None]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    assert torch.allclose(grads[1], grads[0], atol=1e-6) and torch.allclose(grads[2], grads[0], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_a_contrastive_step_mixes_cross_entropy_and_the_contrastive_term():
    """--contrastive λ: the step's loss is (1-λ)·CE + λ·SCL, SCL on the pooled vectors (by hand
    from the same classifier's output); λ = 0 is CE alone."""
    from sdt_ray.features.text import tokenize
    from sdt_ray.losses import supervised_contrastive

    batch = pa.table({"text": ["a b c", "d", "e f", "g h i j"], "text_context": [""] * 4, "label_id": [0, 1, 0, 1]})
    labels = torch.tensor([0, 1, 0, 1])
    tokens, mask = tokenize(WordTokenizer(), batch.column("text").to_pylist(), None, 16)
    with torch.no_grad():
        output = tiny("bert")(tokens, mask)
    ce = float(torch.nn.functional.cross_entropy(output.logits, labels))
    scl = float(supervised_contrastive(output.pooled, labels, 0.3))
    assert scl > 0
    for weight, expected in ((0.0, ce), (0.4, 0.6 * ce + 0.4 * scl)):
        loss = _accumulated_step(tiny("bert"), WordTokenizer(), batch, FinetuneOptions(contrastive=weight), "cpu")
        assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("options, flag", [(FinetuneOptions(contrastive=1.0), "--contrastive must"),
                                           (FinetuneOptions(contrastive=-0.1), "--contrastive must"),
                                           (FinetuneOptions(contrastive=0.5, contrastive_temperature=0.0), "--contrastive-temperature must")])
def test_a_contrastive_weight_outside_its_range_is_refused(options, flag):
    from sdt_ray.finetune import _check

    with pytest.raises(ConfigError, match=flag):
        _check(options)


def test_resuming_a_run_from_before_contrastive_counts_its_default_as_unchanged():
    """A card written before --contrastive existed has no such key: resuming it without the flag
    changes nothing, with it the flag is named."""
    from dataclasses import asdict

    from sdt_ray.finetune import _card_changes
    from sdt_ray.text_card import TextEncoderCard

    def card(**training) -> TextEncoderCard:
        return TextEncoderCard(base_model="mpnet", labels=["a", "b"], context=2, max_length=160, label_splits=["train"],
                               label_dialogues=["d0"], data_sha256="x", training=training)

    old = {k: v for k, v in asdict(FinetuneOptions(epochs=5)).items() if not k.startswith("contrastive")}
    assert _card_changes(card(**old), card(**asdict(FinetuneOptions(epochs=5)))) == []
    assert _card_changes(card(**old), card(**asdict(FinetuneOptions(epochs=5, contrastive=0.5)))) == ["--contrastive"]


def test_layer_lr_decay_scales_each_layer_by_its_depth_below_the_top():
    """3 layers, d 0.5: layer 2 and the head at lr, layer 1 at lr/2, layer 0 at lr/4, the
    embeddings and MPNet's shared position bias at lr/8; frozen parameters are in no group."""
    from sdt_ray.finetune import _optimizer, layer_lr_scales

    classifier = tiny("mpnet")
    scales = {name: scale for name, scale, _ in layer_lr_scales(classifier, 0.5)}
    assert scales["head.weight"] == scales["encoder.encoder.layer.2.attention.attn.q.weight"] == 1.0
    assert scales["encoder.encoder.layer.1.output.dense.weight"] == 0.5
    assert scales["encoder.encoder.layer.0.output.LayerNorm.bias"] == 0.25
    assert scales["encoder.embeddings.word_embeddings.weight"] == scales["encoder.encoder.relative_attention_bias.weight"] == 0.125
    freeze_lower_layers(classifier.encoder, 1)
    optimizer, schedule = _optimizer(classifier, FinetuneOptions(lr=1e-3, epochs=1, layer_lr_decay=0.5), 100, 0)
    size = {}  # parameters per peak lr; layer 0 and the embeddings are frozen, so in no group
    for group in optimizer.param_groups:
        size[round(group["initial_lr"], 9)] = size.get(round(group["initial_lr"], 9), 0) + sum(p.numel() for p in group["params"])
    layer = sum(p.numel() for n, p in classifier.named_parameters() if n.startswith("encoder.encoder.layer.2."))
    assert size == {1e-3: layer + 3 * 8 + 3, 5e-4: layer}  # layer 2 and the head (3, 8) + (3,); layer 1
    optimizer.step()
    schedule.step()  # warm-up step 2 of 10: every group at 0.2 of its own peak
    assert sorted(round(g["lr"], 9) for g in optimizer.param_groups) == [1e-4, 1e-4, 2e-4, 2e-4]


@pytest.mark.parametrize("decay", [0.0, 1.5])
def test_a_layer_lr_decay_outside_its_range_is_refused(decay):
    from sdt_ray.finetune import _check

    with pytest.raises(ConfigError, match="--layer-lr-decay must be in"):
        _check(FinetuneOptions(layer_lr_decay=decay))


def test_without_layer_lr_decay_the_optimiser_keeps_its_two_groups_in_their_old_order():
    """d = 1: the matrices (weight decay) then the biases and norms, as runs from before the flag
    saved them, so that resuming one loads its optimiser state."""
    from sdt_ray.finetune import _optimizer

    classifier = tiny("mpnet")
    freeze_lower_layers(classifier.encoder, 1)
    optimizer, _ = _optimizer(classifier, FinetuneOptions(lr=1e-3), 10, 0)
    learning = [p for p in classifier.parameters() if p.requires_grad]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == \
        [[id(p) for p in learning if p.ndim > 1], [id(p) for p in learning if p.ndim <= 1]]
