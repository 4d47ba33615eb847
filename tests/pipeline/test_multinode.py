"""A simulated 2-node Ray cluster: `import calls`, `extract` and `predict` each run on both
nodes and write to moto S3 the rows a single node writes; a path on one machine's own disk is
refused before any work."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from tests.helpers.synthetic import LABELS, features_table
from sdt_ray import storage
from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
from sdt_ray.config import ModelConfig
from sdt_ray.model import SDT
from sdt_ray.pipelines import ExtractOptions, extract, predict_job
from sdt_ray.pipelines.calls import CallImportOptions, import_calls_job
from sdt_ray.scoring import PredictOptions

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("multinode.py")
KEYS = [("dialogue_id", "ascending"), ("utterance_index", "ascending")]


@pytest.fixture(scope="module")
def on_two_nodes(s3_endpoint, tmp_path_factory, tiny_bert):
    """Train, predict, import calls and extract on one simulated 2-node cluster; inputs and outputs on moto S3."""
    from tests.helpers.media import tone_call
    from sdt_ray.importers import DEMO_CORPUS, import_corpus

    folder = tmp_path_factory.mktemp("multinode")
    for k in range(4):
        tone_call(folder / f"call{k}.wav", [(0, 0.5, 1.5), (1, 2.0, 3.0), (0, 3.5, 4.5)])
    storage.upload_dir(str(folder), "s3://sdt-test/multinode/archive")
    storage.write_table(import_corpus("meld", DEMO_CORPUS, limit_dialogues=4), "s3://sdt-test/multinode/utterances/part-00000.parquet")
    torch.manual_seed(0)
    config = ModelConfig(input_dims=(16,), hidden=16, heads=2, n_classes=3, class_names=tuple(LABELS))
    save_checkpoint(folder / "ckpt", state_dict_for_saving(SDT(config)), config)
    fs, bucket_path = storage.resolve("s3://sdt-test/multinode/ckpt")
    pafs.copy_files(str(folder / "ckpt"), bucket_path, destination_filesystem=fs)
    scored = features_table({"train": 4, "dev": 2, "test": 4})
    storage.write_table(scored, "s3://sdt-test/multinode/features/part-00000.parquet")
    storage.write_table(features_table({"train": 8, "dev": 3, "test": 2}), "s3://sdt-test/multinode/train-features/part-00000.parquet")

    done = subprocess.run(
        [sys.executable, str(SCRIPT),
         "train", "s3://sdt-test/multinode/train-features/part-00000.parquet", "s3://sdt-test/multinode/run", "--",
         "predict", "s3://sdt-test/multinode/ckpt", "s3://sdt-test/multinode/features/part-00000.parquet",
         "s3://sdt-test/multinode/predictions", str(folder / "local-predictions"), "--",
         "import", "s3://sdt-test/multinode/archive", "s3://sdt-test/multinode/calls", "--",
         "extract", "s3://sdt-test/multinode/utterances", "s3://sdt-test/multinode/features-extracted", tiny_bert],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trained, predicted, imported, extracted = json.loads(done.stdout.strip().splitlines()[-1])
    return folder, scored, trained, predicted, imported, extracted


def test_predict_on_two_nodes_writes_to_s3(ray_local, on_two_nodes):
    folder, table, _, result, _, _ = on_two_nodes
    assert result["nodes"] == 2 and result["work_nodes"] == 2
    assert result["rows_in"] == result["rows_out"] == table.num_rows and result["errors"] == {}
    assert "the cluster has 2 nodes" in result["refused"] and "--checkpoint" not in result["refused"]
    assert not (folder / "local-predictions").exists()  # refused before anything was written

    single = str(folder / "single")  # the same job on the one-node session of this test run
    predict_job(str(folder / "ckpt"), "s3://sdt-test/multinode/features/part-00000.parquet", single, PredictOptions(rows_per_file=8),
                log=lambda m: None)
    two = storage.read_table("s3://sdt-test/multinode/predictions").sort_by(KEYS)
    one = storage.read_table(single).sort_by(KEYS)
    assert two.column("label").to_pylist() == one.column("label").to_pylist()
    probabilities = [f"prob_{label}" for label in LABELS]
    np.testing.assert_allclose(np.array(two.select(probabilities).to_pandas(), float),
                               np.array(one.select(probabilities).to_pandas(), float), atol=1e-6)


def test_train_spreads_two_workers_over_two_nodes_with_checkpoints_on_s3(on_two_nodes):
    run_dir = "s3://sdt-test/multinode/run"
    result = on_two_nodes[2]
    assert result["nodes"] == 2 and result["epochs_run"] == 2
    workers = [json.loads(storage.read_text(f"{run_dir}/workers/rank-{r}.json")) for r in (0, 1)]
    assert workers[0]["node_id"] != workers[1]["node_id"]  # STRICT_SPREAD: one worker per node
    # The single-node contract: best/ is a loadable checkpoint, metrics.jsonl has a line per epoch.
    from sdt_ray.checkpoint import load_checkpoint

    assert load_checkpoint(f"{run_dir}/best").config.input_dims == (16,)
    assert len(storage.read_text(f"{run_dir}/metrics.jsonl").splitlines()) == 2
    assert storage.exists(f"{run_dir}/ray")  # Ray Train's own checkpoints went to S3 too


def test_import_calls_and_extract_run_on_both_nodes_with_single_node_rows(ray_local, on_two_nodes, tiny_bert, tmp_path):
    _, _, _, _, imported, extracted = on_two_nodes
    assert imported["work_nodes"] == 2 and extracted["work_nodes"] == 2
    assert imported["calls"] == 4 and extracted["errors"] == {}
    import_calls_job("s3://sdt-test/multinode/archive", str(tmp_path / "calls"), CallImportOptions(calls_per_part=1), log=lambda m: None)
    extract("s3://sdt-test/multinode/utterances", str(tmp_path / "features"), ExtractOptions(text_model=tiny_bert, batch_size=4),
            log=lambda m: None)
    for two, one in (("s3://sdt-test/multinode/calls", tmp_path / "calls"), ("s3://sdt-test/multinode/features-extracted", tmp_path / "features")):
        a, b = storage.read_table(two).sort_by(KEYS), storage.read_table(str(one)).sort_by(KEYS)
        assert a.num_rows == b.num_rows > 0
        vectors = [c for c in ("text_features",) if c in a.column_names]
        assert a.drop_columns(vectors).equals(b.drop_columns(vectors))
        if "text_features" in a.column_names:
            diff = np.abs(np.array(a.column("text_features").to_pylist()) - np.array(b.column("text_features").to_pylist())).max()
            assert diff < 1e-5
