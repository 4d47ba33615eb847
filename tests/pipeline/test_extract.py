"""`extract` on real local Ray: MiniLM from its package, and a tiny random encoder
saved to a temporary folder and loaded through the same path a user's model takes."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sdt_ray import storage
from sdt_ray.errors import InputError
from sdt_ray.features.text import resolve_text_model
from sdt_ray.importers import DEMO_CORPUS, MELD_LABELS, import_corpus
from sdt_ray.pipelines import ExtractOptions, extract
from sdt_ray.schema import labels_from_metadata, validate_features, vectors


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    """Three dialogues per split of the demo slice, with one empty text."""
    table = import_corpus("meld", DEMO_CORPUS, limit_dialogues=3)
    texts = table.column("text").to_pylist()
    texts[2] = "   "
    table = table.set_column(table.column_names.index("text"), "text", pa.array(texts))
    path = str(tmp_path_factory.mktemp("utt") / "utterances.parquet")
    storage.write_table(table, path)
    return path, table


def test_minilm_features_one_row_per_utterance(ray_local, utterances, tmp_path):
    path, table = utterances
    out = str(tmp_path / "features")
    summary = extract(path, out, ExtractOptions(batch_size=32), log=lambda m: None)
    features = storage.read_table(out)
    assert summary.rows_in == summary.rows_out == features.num_rows == table.num_rows
    assert summary.errors == {"text:empty_text": 1}
    info = validate_features(features, out, expected_dims={"text": 384})
    assert info.labels == MELD_LABELS
    keys = features.select(["dialogue_id", "utterance_index"]).to_pylist()
    assert sorted(map(str, keys)) == sorted(map(str, table.select(["dialogue_id", "utterance_index"]).to_pylist()))

    failed = features.filter(pc.greater(pc.list_value_length(features.column("errors")), 0))
    assert failed.num_rows == 1 and failed.column("text_features").null_count == 1
    scored = features.filter(pc.equal(pc.list_value_length(features.column("errors")), 0))
    good = vectors(scored, "text")
    assert np.isfinite(good).all()
    first = scored.slice(0, 1)
    text = table.filter(pc.and_(
        pc.equal(table.column("dialogue_id"), first.column("dialogue_id")[0]),
        pc.equal(table.column("utterance_index"), first.column("utterance_index")[0]),
    )).column("text")[0].as_py()
    np.testing.assert_allclose(good[0], minilm_by_hand(text), atol=1e-4)


def minilm_by_hand(text: str) -> np.ndarray:
    """The sentence-transformers recipe written out: MiniLM's last hidden states, averaged over
    the tokens, (384,)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_text_model(None)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    tokens = tokenizer([text], return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state  # (1, T, 384)
    mask = tokens["attention_mask"].unsqueeze(-1).float()  # (1, T, 1)
    return ((hidden * mask).sum(1) / mask.sum(1))[0].numpy()


@pytest.fixture(scope="module")
def tiny_features(ray_local, utterances, tiny_bert, tmp_path_factory):
    """Features through the tiny random encoder (an extract costs about 15 s of start-up here)."""
    out = str(tmp_path_factory.mktemp("tiny") / "features")
    extract(utterances[0], out, ExtractOptions(text_model=tiny_bert), log=lambda m: None)
    return out


def test_tiny_random_encoder_from_a_local_folder(utterances, tiny_features):
    _, table = utterances
    features = storage.read_table(tiny_features)
    assert validate_features(features, tiny_features).dims == {"text": 24}
    assert features.num_rows == table.num_rows


def test_existing_output_needs_overwrite(utterances, tiny_bert, tiny_features):
    path, _ = utterances
    tiny = ExtractOptions(text_model=tiny_bert)  # the refusal does not depend on the encoder; a tiny one is quick
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        extract(path, tiny_features, tiny, log=lambda m: None)
    again = extract(path, tiny_features, ExtractOptions(text_model=tiny_bert, overwrite=True), log=lambda m: None)
    assert storage.read_table(tiny_features).num_rows == again.rows_in  # replaced, not appended


def test_missing_local_model_is_a_clear_error(ray_local, utterances, tmp_path):
    from sdt_ray.errors import ConfigError
    from sdt_ray.features.text import TextEncoder

    with pytest.raises(ConfigError, match="never downloads"):
        TextEncoder(str(tmp_path / "no-such-model"))


def test_features_round_trip_through_s3(ray_local, utterances):
    path, table = utterances
    out = "s3://sdt-test/features/meld-slice"
    extract(path, out, ExtractOptions(overwrite=True), log=lambda m: None)
    features = storage.read_table(out)
    assert features.num_rows == table.num_rows
    assert labels_from_metadata(features.schema) == MELD_LABELS
