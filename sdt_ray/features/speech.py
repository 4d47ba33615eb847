"""A licence-clean audio path: a transformers speech encoder (wav2vec2 / HuBERT / WavLM family),
its last hidden layer mean-pooled over time, in place of openSMILE's functionals.

openSMILE is under audEERING's research licence (no commercial use); wav2vec2, HuBERT and WavLM
checkpoints are mostly Apache-2.0 or MIT (check the one you use). The model is a local folder or
an id in the user's own Hugging Face cache; nothing is downloaded at run time.
"""

from __future__ import annotations

import numpy as np

from .local_models import hidden_size, load_pretrained, on_device, resolve_local
from .media import SAMPLE_RATE, MediaError

MAX_SECONDS = 30.0  # longer turns are encoded in this many seconds' pieces (attention cost grows as T²)
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s: below the convolutional front end's receptive field


resolve_speech_model = resolve_local


def speech_model_dim(model: str) -> int:
    """The encoder's vector size from its config alone (no weights loaded)."""
    return hidden_size("audio encoder", model, resolve_speech_model(model))


class SpeechEncoder:
    """Mono float32 signal at SAMPLE_RATE -> (D,) mean of the last hidden states."""

    def __init__(self, model: str, threads: int = 1, device: str | None = None):
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        path = resolve_speech_model(model)
        self.extractor = load_pretrained("audio encoder", model, path, AutoFeatureExtractor)
        torch.set_num_threads(threads)
        self.model, self.device = on_device(load_pretrained("audio encoder", model, path, AutoModel), device)
        self.dim = int(self.model.config.hidden_size)
        self.name = path

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        import torch

        if len(signal) < MIN_SAMPLES:
            raise MediaError("empty_segment", f"{len(signal) / SAMPLE_RATE:.3f} s of audio is too short to describe")
        piece = int(MAX_SECONDS * SAMPLE_RATE)
        sums, frames = np.zeros(self.dim, dtype=np.float64), 0
        with torch.inference_mode():
            for start in range(0, len(signal), piece):
                chunk = signal[start : start + piece]
                if len(chunk) < MIN_SAMPLES:
                    break  # a sliver at the end adds nothing a listener would hear
                inputs = self.extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").to(self.device)
                hidden = self.model(**inputs).last_hidden_state[0]  # (T', D)
                sums += hidden.double().sum(dim=0).cpu().numpy()
                frames += hidden.shape[0]
        values = (sums / max(frames, 1)).astype(np.float32)  # (D,) mean over every frame of the turn
        if not np.isfinite(values).all():
            raise MediaError("feature_error", "the speech encoder gave non-finite values")
        return values
