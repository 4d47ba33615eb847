"""Table validation names the file and the column."""

import numpy as np
import pyarrow as pa
import pytest
from tests.helpers.synthetic import LABELS, features_table, with_values

from sdt_ray.errors import InputError
from sdt_ray.schema import (
    UTTERANCES_SCHEMA,
    add_errors,
    add_feature_column,
    error_counts,
    failed_modalities,
    labels_from_metadata,
    validate_features,
    validate_utterances,
    vectors,
)


def test_features_table_passes_and_reports_dims_and_labels():
    info = validate_features(features_table(dims={"text": 16, "audio": 4}), "f.parquet")
    assert info.dims == {"text": 16, "audio": 4}
    assert info.labels == LABELS


def test_wrong_dimension_names_file_and_column():
    with pytest.raises(InputError, match=r"f.parquet: column 'text_features' has dimension 16, expected 384"):
        validate_features(features_table(), "f.parquet", expected_dims={"text": 384})


def test_missing_column_names_file_and_column():
    table = features_table().drop_columns(["speaker"])
    with pytest.raises(InputError, match=r"f.parquet: missing column 'speaker' in the features table"):
        validate_features(table, "f.parquet")


def test_missing_modality_names_the_column():
    with pytest.raises(InputError, match=r"column 'audio_features' is missing; the model needs audio"):
        validate_features(features_table(), "f.parquet", expected_dims={"audio": 4})


def test_variable_length_vectors_are_rejected_with_their_sizes():
    table = features_table()
    ragged = pa.array([[0.0] * 16] * (table.num_rows - 1) + [[0.0] * 15], pa.list_(pa.float32()))
    table = table.set_column(table.column_names.index("text_features"), "text_features", ragged)
    with pytest.raises(InputError, match=r"column 'text_features' has vectors of different sizes \[15, 16\]"):
        validate_features(table, "f.parquet")


def test_wrong_type_names_the_column():
    table = features_table()
    table = table.set_column(table.column_names.index("utterance_index"), "utterance_index", pa.array(["x"] * table.num_rows))
    with pytest.raises(InputError, match=r"column 'utterance_index' has type string, expected int32"):
        validate_features(table, "f.parquet")


def test_unknown_split_value():
    table = features_table()
    splits = table.column("split").to_pylist()
    splits[0] = "validation"
    table = with_values(table, "split", splits)
    with pytest.raises(InputError, match=r"column 'split' has unknown values \['validation'\]"):
        validate_features(table, "f.parquet")


def test_utterances_get_optional_media_columns_as_nulls():
    table = pa.table({
        "dialogue_id": ["d1"], "utterance_index": [0], "speaker": ["A"],
        "text": ["hi"], "label": [None], "split": ["test"],
    })
    out = validate_utterances(table, "u.parquet")
    assert out.schema.remove_metadata() == UTTERANCES_SCHEMA
    assert out.column("audio_uri").null_count == 1


def test_feature_column_records_each_modality_error_and_nulls_failed_rows():
    batch = add_errors(pa.table({"k": [0, 1, 2]}), "audio", [("silence", "RMS 0"), None, None])
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = add_feature_column(batch, "text", values, [None, "empty_text", None])
    assert out.column("errors").to_pylist() == [
        [{"modality": "audio", "reason": "silence", "detail": "RMS 0"}],
        [{"modality": "text", "reason": "empty_text", "detail": ""}],
        [],
    ]
    assert error_counts(out) == {"audio:silence": 1, "text:empty_text": 1}
    assert failed_modalities(out) == [{"audio"}, {"text"}, set()]
    got = vectors(out, "text")
    assert np.isnan(got[1]).all() and got[2].tolist() == [4.0, 5.0]
    assert out.column("text_features").null_count == 1


def test_labels_travel_in_schema_metadata():
    assert labels_from_metadata(features_table().schema) == LABELS
