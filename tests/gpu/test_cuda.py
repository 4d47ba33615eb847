"""GPU checks (marked; skipped where no CUDA device is present)."""

import numpy as np
import pytest
import torch

from sdt_ray.collate import batches
from sdt_ray.config import ModelConfig
from sdt_ray.dialogues import dialogue_rows, select_split, to_dialogues
from sdt_ray.engine import predict, train_epoch
from sdt_ray.losses import SelfDistillationLoss
from sdt_ray.model import SDT
from sdt_ray.demo import CALL_GENERATOR

pytestmark = pytest.mark.gpu

PARITY = ModelConfig(
    modalities=("text", "audio", "visual"), input_dims=(1024, 300, 342), hidden=1024, heads=8,
    n_classes=7, frozen_identity_gates=True, normalize_inputs=False,
)


def test_parity_model_matches_cpu_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = SDT(PARITY).eval()
    features = {m: torch.randn(2, 6, PARITY.input_dim(m)) for m in PARITY.modalities}
    speakers = torch.randint(0, 9, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    on_cpu = model(features, speakers, mask).logits
    model.cuda()
    on_gpu = model({m: x.cuda() for m, x in features.items()}, speakers.cuda(), mask.cuda()).logits.cpu()
    torch.testing.assert_close(on_gpu[mask], on_cpu[mask], atol=1e-4, rtol=1e-4)


def test_training_on_cuda_reduces_the_loss():
    from tests.helpers.synthetic import LABELS, features_table

    config = ModelConfig(input_dims=(16,), hidden=32, heads=2, n_classes=3, class_names=tuple(LABELS), normalize_inputs=False)
    table = features_table()
    train = to_dialogues(dialogue_rows(select_split(table, "train", "t"), config, LABELS, "t"), config)
    torch.manual_seed(0)
    model = SDT(config).cuda()
    loss_fn = SelfDistillationLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = train_epoch(model, loss_fn, optimizer, batches(train, 4, 3, shuffle=True), "cuda")["loss_total"]
    for epoch in range(5):
        last = train_epoch(model, loss_fn, optimizer, batches(train, 4, 3, shuffle=True, seed=epoch), "cuda")["loss_total"]
    assert last < first
    predictions = predict(model, batches(train, 8, 3), "cuda")
    assert np.isfinite(predictions.probabilities).all()


def test_text_encoder_on_cuda_matches_cpu(tmp_path):
    """A tiny random BERT with a hand-made vocabulary, saved to a folder and
    loaded through the same path as a user's encoder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from sdt_ray.features.text import TextEncoder

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "can", "'", "t", "believe", "it", "!", "okay", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    texts = ["I can't believe it!", "", "Okay."]
    cpu_vectors, cpu_errors = TextEncoder(str(tmp_path), device="cpu")(texts)
    gpu_vectors, gpu_errors = TextEncoder(str(tmp_path), device="cuda")(texts)
    assert cpu_errors == gpu_errors == [None, "empty_text", None]
    np.testing.assert_allclose(gpu_vectors[[0, 2]], cpu_vectors[[0, 2]], atol=1e-3)


def test_whisper_float16_on_cuda_hears_what_int8_on_cpu_hears(tmp_path):
    """The recogniser on one GPU (float16) against CPU int8, on a generated call: same words,
    within a small word error rate, and the throughput of each (printed for the note)."""
    import subprocess
    import sys
    import time

    from sdt_ray.asr import AsrOptions, Recogniser
    from sdt_ray.calls import FRAME_S, EnergyOptions, prepare_call
    from sdt_ray.heard import word_error_rate
    from sdt_ray.importers import DEMO_CORPUS

    subprocess.run([sys.executable, str(CALL_GENERATOR), "--meld", str(DEMO_CORPUS / "dev_sent_emo.csv"),
                    "--output", str(tmp_path), "--calls", "2"], check=True, capture_output=True)
    call = prepare_call("call_000", str(tmp_path / "call_000.wav"), None, EnergyOptions())
    heard = {}
    for device in ("cpu", "cuda"):
        recogniser = Recogniser(AsrOptions(), device=device, threads=2)
        started = time.perf_counter()
        turns = recogniser.call(call.audio_uri, call.levels, call.duration_s, FRAME_S)
        seconds = time.perf_counter() - started
        heard[device] = " ".join(t.text for t in turns)
        print(f"{device}: {call.duration_s / seconds:.1f} audio s per wall s")
    assert heard["cuda"] and word_error_rate(heard["cpu"], heard["cuda"]) <= 0.2
