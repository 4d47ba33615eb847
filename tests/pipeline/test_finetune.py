"""`finetune-text` on real local Ray: a tiny random MPNet fine-tuned for one step on 2 Ray
Train workers (speaker-named turns, two past and one future turn of context, the lower layer
frozen, the step in two micro-batches) writes a folder that `extract` loads as is; the card
travels into the features table, and the same input reaches the encoder inside the Ray Data stage."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sdt_ray import storage
from sdt_ray.cli import app
from sdt_ray.features.text import TextEncoder
from sdt_ray.text_card import (
    CARD_METADATA_KEY,
    TextInput,
    card_from_metadata,
    input_texts,
    labelled_fingerprint,
    read_card,
)
from sdt_ray.importers import DEMO_CORPUS, MELD_LABELS, import_corpus
from sdt_ray.schema import ENCODERS_METADATA_KEY, validate_features, vectors

pytestmark = pytest.mark.slow


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def finetuned(ray_local, tiny_mpnet, tmp_path_factory):
    """Three dialogues per split of the demo slice; every train row in one step of 2 workers."""
    folder = tmp_path_factory.mktemp("finetune")
    table = import_corpus("meld", DEMO_CORPUS, limit_dialogues=3)
    utterances = str(folder / "utterances.parquet")
    storage.write_table(table, utterances)
    n_train = pc.sum(pc.equal(table.column("split"), "train")).as_py()
    encoder = folder / "encoder"
    out = invoke("finetune-text", "--input", utterances, "--output", encoder, "--base-model", tiny_mpnet,
                 "--epochs", 1, "--workers", 2, "--batch-size", n_train, "--context", 2, "--future", 1,
                 "--freeze-layers", 1, "--accumulate", 2, "--max-length", 40, "--lr", 1e-3)
    return table, utterances, str(encoder), out


def test_one_step_on_two_workers_writes_an_encoder_folder(finetuned):
    table, _, encoder, out = finetuned
    assert "2 worker(s)" in out and "best epoch 1 of 1" in out
    assert "context 2 past + 1 future turns, speaker-named, lowest 1 layers frozen" in out and "in 2 steps" in out
    assert {"config.json", "model.safetensors", "tokenizer.json", "sdt_ray_text_head.safetensors",
            "sdt_ray_text_encoder.json", "metrics.jsonl"} <= set(os.listdir(encoder))
    assert "ray" not in os.listdir(encoder) and "progress.jsonl" not in os.listdir(encoder)  # run state, gone at the end
    (epoch,) = [json.loads(line) for line in open(os.path.join(encoder, "metrics.jsonl"))]
    assert epoch["steps"] == 1 and epoch["workers"] == 2 and 0.0 <= epoch["dev_weighted_f1"] <= 1.0
    card = read_card(encoder)
    train = table.filter(pc.equal(table.column("split"), "train"))
    assert card.labels == MELD_LABELS and card.context == 2 and card.separator == "[SEP]"
    assert card.text_input() == TextInput(past=2, future=1, speakers=True, separator="[SEP]")
    assert card.training["freeze_layers"] == 1 and card.training["accumulate"] == 2
    assert card.label_splits == ["train"] and card.label_dialogues == sorted(set(train.column("dialogue_id").to_pylist()))
    assert card.selection["split"] == "dev" and card.selection["metrics"]["weighted_f1"] == epoch["dev_weighted_f1"]
    assert card.data_sha256 == labelled_fingerprint(train.filter(pc.is_valid(train.column("label"))))
    assert card.base_model.endswith("tiny-mpnet0")


def test_extract_loads_the_folder_and_carries_its_card(finetuned, tmp_path):
    table, utterances, encoder, _ = finetuned
    features_uri = str(tmp_path / "features")
    invoke("extract", "--input", utterances, "--output", features_uri, "--text-model", encoder)
    features = storage.read_table(features_uri)
    assert validate_features(features, features_uri).dims == {"text": 24}
    assert card_from_metadata(features.schema) == read_card(encoder)
    assert "fine-tuned from" in json.loads(features.schema.metadata[ENCODERS_METADATA_KEY])["text"]
    assert CARD_METADATA_KEY in features.schema.metadata

    # The Ray Data stage read each utterance as `speaker: text` with its two previous turns and
    # the next one, as fine-tuning did.
    # extract cut each input at the card's 40 tokens, as fine-tuning did, without being told.
    loaded = TextEncoder(encoder)
    assert loaded.max_length == 40
    texts, contexts = input_texts(table, read_card(encoder).text_input())
    lengths = [len(ids) for ids in loaded.tokenizer(texts, contexts)["input_ids"]]
    assert sum(n > 40 for n in lengths) >= 5  # enough inputs are cut for a wrong limit to show below
    direct, _ = loaded(texts, contexts)
    keys = list(zip(table.column("dialogue_id").to_pylist(), table.column("utterance_index").to_pylist()))
    got = dict(zip(zip(features.column("dialogue_id").to_pylist(), features.column("utterance_index").to_pylist()),
                   vectors(features, "text")))
    assert np.allclose(np.stack([got[k] for k in keys]), direct, atol=1e-5)
    plain, _ = TextEncoder(encoder)(table.column("text").to_pylist())
    assert not np.allclose(plain, direct, atol=1e-3)  # the context changes the vectors


def test_the_encoder_scores_test_on_its_own(finetuned, tmp_path):
    table, utterances, encoder, _ = finetuned
    out = invoke("evaluate-text", "--encoder", encoder, "--input", utterances, "--split", "test", "--output", tmp_path / "ev")
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    n_test = pc.sum(pc.equal(table.column("split"), "test")).as_py()
    assert metrics["n_utterances"] == n_test and metrics["split"] == "test" and metrics["warnings"] == []
    assert f"{metrics['weighted_f1']:.4f}" in out and (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 1000
    assert metrics["encoder_selection"]["split"] == "dev" and "test split" not in out  # selected on dev, and said so
    leaked = invoke("evaluate-text", "--encoder", encoder, "--input", utterances, "--split", "train", "--output", tmp_path / "tr")
    assert "fine-tuned on the labels of 3 of the 3 train dialogues" in leaked


def test_a_killed_run_resumes_to_the_uninterrupted_weights(ray_local, tiny_mpnet, tmp_path):
    """Three epochs on one worker, the job's worker killed (os._exit) just after its second
    epoch's checkpoint; `--resume` continues from the last checkpoint Ray Train registered and
    ends with the weights and the figures of a run that was never interrupted."""
    table = import_corpus("meld", DEMO_CORPUS, limit_dialogues=3)
    utterances = str(tmp_path / "utterances.parquet")
    storage.write_table(table, utterances)
    flags = ["--input", utterances, "--base-model", tiny_mpnet, "--epochs", 3, "--batch-size", 8, "--context", 1,
             "--max-length", 40, "--lr", 1e-3]
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    invoke("finetune-text", "--output", whole, *flags)

    env = {**os.environ, "SDT_RAY_CRASH_AT": "finetune-reported#2", "SDT_RAY_CRASH_FILE": str(tmp_path / "crashed")}
    cli = [sys.executable, "-m", "sdt_ray.cli", "finetune-text", "--output", str(out), *map(str, flags)]
    killed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0 and (tmp_path / "crashed").exists(), killed.stderr[-2000:]
    assert killed.stderr.strip().splitlines()[-1].startswith("error: fine-tuning failed")
    assert "run.json" in os.listdir(out) and "sdt_ray_text_encoder.json" not in os.listdir(out)  # unfinished

    refused = CliRunner().invoke(app, ["finetune-text", "--output", str(out), *map(str, flags)])
    assert refused.exit_code != 0 and "pass --resume to continue its unfinished run" in refused.output
    changed = CliRunner().invoke(app, ["finetune-text", "--output", str(out), *map(str, flags), "--lr", "2e-3", "--resume"])
    assert changed.exit_code != 0 and "other settings or data (--lr)" in changed.output

    invoke("finetune-text", "--output", out, *flags, "--resume")
    history = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[0]["attempt"] == 0 and history[-1]["attempt"] == 1  # epoch 3 ran after the restart, epoch 1 before
    reference = [json.loads(line) for line in open(whole / "metrics.jsonl")]
    figures = ("loss", "dev_weighted_f1", "dev_accuracy", "best_epoch")
    assert [{k: r[k] for k in figures} for r in history] == [{k: r[k] for k in figures} for r in reference]
    for name in ("sdt_ray_text_head.safetensors", "model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_card(str(out)) == read_card(str(whole))
    assert not {"run.json", "ray", "progress.jsonl"} & set(os.listdir(out))
    finished = CliRunner().invoke(app, ["finetune-text", "--output", str(out), *map(str, flags), "--resume"])
    assert finished.exit_code != 0 and "it is a finished encoder folder" in finished.output


def test_dialogue_windows_are_learnt_and_extracted_alike(ray_local, tiny_mpnet, tmp_path):
    """--windows on 2 workers, each step in 2 micro-batches: the card records the window; the
    Ray Data stage's vectors are the encoder's own centred windows; evaluate-text's dev figure is
    the one fine-tuning selected on (the same layout); serve refuses the encoder (future turns)."""
    from sdt_ray.config import ModelConfig
    from sdt_ray.errors import ConfigError
    from sdt_ray.live import check_servable
    from sdt_ray.windows import side_cap

    table = import_corpus("meld", DEMO_CORPUS, limit_dialogues=3)
    utterances = str(tmp_path / "utterances.parquet")
    storage.write_table(table, utterances)
    encoder = tmp_path / "encoder"
    out = invoke("finetune-text", "--input", utterances, "--output", encoder, "--base-model", tiny_mpnet, "--windows",
                 "--max-length", 48, "--epochs", 1, "--workers", 2, "--batch-size", 8, "--accumulate", 2, "--lr", 1e-3)
    assert "dialogue windows" in out and "2 worker(s)" in out
    card = read_card(str(encoder))
    assert card.window == side_cap(48) == 22 and card.context == card.future == 0 and card.training["windows"]
    (epoch,) = [json.loads(line) for line in open(encoder / "metrics.jsonl")]
    assert epoch["steps"] >= 1

    features_uri = str(tmp_path / "features")
    invoke("extract", "--input", utterances, "--output", features_uri, "--text-model", encoder)
    features = storage.read_table(features_uri)
    loaded = TextEncoder(str(encoder))
    texts, contexts = input_texts(table, card.text_input())
    direct, _ = loaded(texts, contexts)
    keys = list(zip(table.column("dialogue_id").to_pylist(), table.column("utterance_index").to_pylist()))
    got = dict(zip(zip(features.column("dialogue_id").to_pylist(), features.column("utterance_index").to_pylist()),
                   vectors(features, "text")))
    assert np.allclose(np.stack([got[k] for k in keys]), direct, atol=1e-5)
    from sdt_ray.features.text import mean_pool, tokenize

    tokens, pool = tokenize(loaded.tokenizer, texts[:6], contexts[:6], 48, windowed=True)  # centred windows, by hand
    with torch.inference_mode():
        by_hand = mean_pool(loaded.model(**tokens).last_hidden_state, pool).numpy()
    assert np.allclose(by_hand, direct[:6], atol=1e-5)
    alone, _ = loaded(texts, [""] * len(texts))  # the same utterances without their turns around
    assert not np.allclose(alone, direct, atol=1e-3)

    invoke("evaluate-text", "--encoder", encoder, "--input", utterances, "--split", "dev", "--output", tmp_path / "ev")
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["weighted_f1"] == pytest.approx(epoch["dev_weighted_f1"], abs=1e-6)
    config = ModelConfig(input_dims=(24,), hidden=8, heads=2, n_classes=7)
    with pytest.raises(ConfigError, match="dialogue windows"):
        check_servable("ckpt", config, str(encoder))
