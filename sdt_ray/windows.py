"""Dialogue windows: an encoder that reads each utterance among its neighbours in dialogue
order, `[CLS] turn [SEP] turn [SEP] ... [SEP]`, and pools each utterance's own tokens.

Fine-tuning cuts every dialogue into windows of consecutive turns that fit `max_length` tokens
and learns from every labelled turn of a window in one pass: on MELD, about 15 tokens per
utterance where `--context 1 --future 1` reads 46 for one (a pair per utterance), while each
utterance sees every turn the window holds. `extract` builds, for each utterance, the window
centred on it (nearest turns first, past before future, until the next one would not fit) in
the same layout, and pools that utterance alone. Both read the same token sequence shape: a
turn with k turns before it and m after in a training window is laid out exactly as `extract`
lays out an utterance with k past and m future turns.

No Ray and no tokenizer state here: token ids in, token ids and spans out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import zip_longest

import numpy as np
import torch

Span = tuple[int, int]  # [start, end) token positions of one turn inside its sequence


@dataclass(frozen=True)
class Specials:
    cls: int  # opens every sequence
    sep: int  # closes every turn
    pad: int


def specials(tokenizer) -> Specials:
    return Specials(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)


def side_cap(max_length: int) -> int:
    """Most turns one side of a window can hold: each costs at least 2 tokens (a word and its
    [SEP]), and the sequence opens with [CLS] and holds the utterance itself."""
    return max(0, (max_length - 3) // 2)


def encode_context(before: list[str], after: list[str]) -> str:
    """The turns around one utterance as the context column carries them in window mode:
    JSON [before, after], each nearest first (so a cap keeps the nearest)."""
    return json.dumps([before, after], ensure_ascii=False)


def decode_context(context: str | None) -> tuple[list[str], list[str]]:
    if not context:
        return [], []
    before, after = json.loads(context)
    return before, after


def turn_ids(tokenizer, turns: list[str], max_length: int) -> dict[str, list[int]]:
    """Each distinct turn's token ids without special tokens, cut to what one window can hold."""
    distinct = list(dict.fromkeys(turns))
    if not distinct:
        return {}
    ids = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    return {turn: list(i[: max_length - 2]) for turn, i in zip(distinct, ids)}


def centred(target: list[int], before: list[list[int]], after: list[list[int]], max_length: int,
            special: Specials) -> tuple[list[int], Span]:
    """One utterance's window: the nearest turns first, alternating past and future (past
    first), each side stopping at its first turn that does not fit. Returns the sequence in
    dialogue order and the utterance's span."""
    target = target[: max_length - 2]
    budget = max_length - 2 - len(target)  # [CLS] and the utterance's own [SEP]
    past: list[list[int]] = []
    future: list[list[int]] = []
    open_sides = {"past": True, "future": True}
    for earlier, later in zip_longest(before, after):
        for turn, side, kept in ((earlier, "past", past), (later, "future", future)):
            if turn is None or not open_sides[side]:
                continue
            if len(turn) + 1 <= budget:
                kept.append(turn)
                budget -= len(turn) + 1
            else:
                open_sides[side] = False
    turns = list(reversed(past)) + [target] + future
    sequence, spans = laid_out(turns, special)
    return sequence, spans[len(past)]


def laid_out(turns: list[list[int]], special: Specials) -> tuple[list[int], list[Span]]:
    """`[CLS] t1 [SEP] t2 [SEP] ...`: the sequence and each turn's span."""
    sequence, spans = [special.cls], []
    for turn in turns:
        spans.append((len(sequence), len(sequence) + len(turn)))
        sequence += turn + [special.sep]
    return sequence, spans


def cut(lengths: list[int], max_length: int, first_budget: int | None = None) -> list[Span]:
    """A dialogue's turns (token counts) cut into consecutive windows of at most `max_length`
    tokens ([CLS] plus each turn and its [SEP]); `first_budget` (tokens) ends the first window
    early, so that the cuts fall elsewhere each epoch. Returns [start, end) turn ranges."""
    windows, start, used = [], 0, 1
    budget = max_length if first_budget is None else max(3, min(first_budget, max_length))
    for k, n in enumerate(lengths):
        if k > start and used + n + 1 > budget:
            windows.append((start, k))
            start, used, budget = k, 1, max_length
        used += n + 1
    if lengths:
        windows.append((start, len(lengths)))
    return windows


def training_windows(dialogues: list[tuple[list[list[int]], list[int]]], max_length: int,
                     rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(dialogue, start, end) for every window holding at least one labelled turn (label >= 0),
    with the first cut of each dialogue drawn at random."""
    out = []
    for d, (turns, labels) in enumerate(dialogues):
        first = int(rng.integers(max_length // 4, max_length + 1))
        for start, end in cut([len(t) for t in turns], max_length, first):
            if any(label >= 0 for label in labels[start:end]):
                out.append((d, start, end))
    return out


def batch(sequences: list[list[int]], targets: list[list[Span]], pad: int):
    """Padded sequences and the pool of each target: input_ids, attention_mask (B, T) and
    pool (N, B, T), 1 over target n's own tokens in its sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    n_targets = sum(len(t) for t in targets)
    pool = torch.zeros((n_targets, len(sequences), width), dtype=torch.float32)
    n = 0
    for b, (sequence, spans) in enumerate(zip(sequences, targets)):
        ids[b, : len(sequence)] = torch.tensor(sequence)
        mask[b, : len(sequence)] = 1
        for start, end in spans:
            pool[n, b, start:end] = 1.0
            n += 1
    return {"input_ids": ids, "attention_mask": mask}, pool


@dataclass(frozen=True)
class Window:
    sequence: list[int]  # [CLS] t1 [SEP] t2 [SEP] ...
    spans: list[Span]  # the labelled turns' token spans
    labels: list[int]  # their label ids


def window_of(turns: list[list[int]], labels: list[int], start: int, end: int, special: Specials) -> Window:
    sequence, spans = laid_out(turns[start:end], special)
    kept = [(span, label) for span, label in zip(spans, labels[start:end]) if label >= 0]
    return Window(sequence, [s for s, _ in kept], [label for _, label in kept])


def plan_steps(dialogues: list[tuple[list[list[int]], list[int]]], max_length: int, batch_size: int, workers: int,
               seed: int) -> tuple[int, int]:
    """(windows per step on each worker, steps per epoch) so that a step holds about
    `batch_size` labelled utterances over all workers, counted on one draw of the cuts."""
    windows = training_windows(dialogues, max_length, np.random.default_rng(seed))
    targets = sum(sum(label >= 0 for label in dialogues[d][1][s:e]) for d, s, e in windows)
    per_step = max(1, round(batch_size / workers * len(windows) / max(targets, 1)))
    return per_step, max(1, len(windows) // (workers * per_step))


def epoch_batches(dialogues: list[tuple[list[list[int]], list[int]]], max_length: int, per_step: int, steps: int,
                  special: Specials, rng: np.random.Generator, pool_steps: int = 32):
    """Exactly `steps` batches of `per_step` windows: cuts drawn afresh, windows shuffled, then
    sorted by length within pools of `pool_steps` batches (less padding) and the batches of a
    pool shuffled. When this rank's windows run out before `steps` (DDP ranks must take the
    same number of steps), the cuts are drawn again."""
    made = 0
    while made < steps:
        drawn = training_windows(dialogues, max_length, rng)
        if not drawn:
            raise ValueError("no labelled turn to train on")
        order = rng.permutation(len(drawn))
        pool_size = per_step * pool_steps
        for p in range(0, len(order), pool_size):
            pool = [window_of(*dialogues[drawn[i][0]], drawn[i][1], drawn[i][2], special) for i in order[p : p + pool_size]]
            pool.sort(key=lambda w: len(w.sequence))
            starts = list(range(0, len(pool), per_step))
            for start in rng.permutation(starts):
                if made == steps:
                    return
                yield pool[int(start) : int(start) + per_step]
                made += 1
