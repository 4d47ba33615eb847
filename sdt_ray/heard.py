"""How well recognised turns match a gold transcript: word error rate, and which gold turns a
recognised turn covers in time. Pure Python, for tests, the bench and the demo.

- WER: word-level edit distance (substitutions + deletions + insertions) over the number of
  reference words, after lower-casing and dropping punctuation.
- A gold turn is matched by the recognised turn of the same call that overlaps it most, when
  that overlap is at least half of the gold turn's length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower().replace("’", "'"))


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two word lists, O(len(reference) x len(hypothesis))."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref = words(reference)
    return edit_distance(ref, words(hypothesis)) / max(len(ref), 1)


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float
    text: str | None = None
    key: object = None  # whatever identifies the turn (e.g. its utterance_index)


def match_turns(gold: list[Span], heard: list[Span], min_overlap: float = 0.5) -> dict[int, int]:
    """gold index -> heard index, for each gold turn that a heard turn overlaps for at least
    `min_overlap` of the gold turn's length (the heard turn overlapping it most)."""
    matches = {}
    for g, turn in enumerate(gold):
        length = max(turn.end_s - turn.start_s, 1e-9)
        overlaps = [(min(turn.end_s, h.end_s) - max(turn.start_s, h.start_s), k) for k, h in enumerate(heard)]
        best, k = max(overlaps, default=(0.0, -1))
        if best / length >= min_overlap:
            matches[g] = k
    return matches
