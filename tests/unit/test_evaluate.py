"""`evaluate --without`: a modality scored as missing is masked exactly as if the table lacked it."""

import pytest
import torch
from tests.helpers.synthetic import LABELS, features_table

from sdt_ray import storage
from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
from sdt_ray.config import ModelConfig
from sdt_ray.errors import ConfigError
from sdt_ray.evaluate import evaluate
from sdt_ray.model import SDT

DIMS = {"text": 12, "audio": 6}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(modalities=("text", "audio"), input_dims=(12, 6), hidden=16, heads=2, n_classes=3,
                         class_names=tuple(LABELS))
    folder = tmp_path_factory.mktemp("without")
    save_checkpoint(folder / "ckpt", state_dict_for_saving(SDT(config)), config)
    table = features_table({"test": 5}, dims=DIMS)
    storage.write_table(table, str(folder / "both.parquet"))
    storage.write_table(table.drop_columns(["audio_features"]), str(folder / "text.parquet"))
    return folder, table


def test_without_audio_equals_a_table_without_audio(inputs, tmp_path):
    folder, table = inputs
    masked = evaluate(str(folder / "ckpt"), str(folder / "both.parquet"), "test", str(tmp_path / "a"), without=("audio",))
    absent = evaluate(str(folder / "ckpt"), str(folder / "text.parquet"), "test", str(tmp_path / "b"))
    full = evaluate(str(folder / "ckpt"), str(folder / "both.parquet"), "test", str(tmp_path / "c"))
    assert masked.metrics["confusion_matrix"] == absent.metrics["confusion_matrix"]
    assert masked.metrics["weighted_f1"] == absent.metrics["weighted_f1"]
    assert masked.metrics["scored_without"] == {"text": 0, "audio": table.num_rows} and masked.metrics["without"] == ["audio"]
    assert full.metrics["scored_without"] == {"text": 0, "audio": 0} and full.metrics["without"] == []


def test_without_an_unknown_modality_is_refused(inputs, tmp_path):
    folder, _ = inputs
    with pytest.raises(ConfigError, match="--without visual: the checkpoint's modalities are text,audio"):
        evaluate(str(folder / "ckpt"), str(folder / "both.parquet"), "test", str(tmp_path / "a"), without=("visual",))
