"""Speech recognition's pure parts: spans cut in quiet, words joined into turns (no model)."""

import numpy as np
import pytest

from sdt_ray.asr import HeardWord, resolve_asr_model, speech_spans, turns_from_words
from sdt_ray.errors import ConfigError


def word(start, end, text, logprob=-0.5, no_speech=0.1):
    return HeardWord(start, end, text, 0.9, logprob, no_speech)


def test_words_are_joined_into_turns_at_pauses():
    words = [word(0.0, 0.4, " Hello"), word(0.5, 0.9, " there.", -0.3), word(2.0, 2.3, " Yes", -1.5, 0.7),
             word(2.4, 2.6, ""), word(5.0, 5.1, " ")]
    turns = turns_from_words(words, channel=1, pause_s=0.8)
    # 0.9 -> 2.0 is a pause of 1.1 s: a new turn; the blank word at 5.0 s makes no turn.
    assert [(t.start_s, t.end_s, t.text, t.channel) for t in turns] == [(0.0, 0.9, "Hello there.", 1), (2.0, 2.6, "Yes", 1)]
    assert turns[0].logprob == pytest.approx(-0.4) and turns[0].no_speech == pytest.approx(0.1)
    assert turns[1].no_speech == pytest.approx(0.7)


def test_a_long_recording_is_cut_where_both_channels_are_quiet():
    frame_s = 0.5
    levels = np.full((2, 100), -20.0, dtype=np.float32)  # 50 s, loud everywhere...
    levels[1, 36] = -70.0  # ...but one channel alone being quiet is not a pause
    levels[:, 34] = -60.0  # both quiet at 17 s, inside the last quarter of the first 20 s window (15-20 s)
    spans = speech_spans(levels, frame_s, duration_s=50.0, span_s=20.0)
    assert spans[0] == (0.0, 17.0)
    assert all(b - a <= 20.0 for a, b in spans) and spans[-1][1] == 50.0
    assert all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))  # no gap, no overlap


def test_a_short_recording_is_one_span():
    assert speech_spans(np.zeros((1, 10), np.float32), 0.03, 0.3, 600.0) == [(0.0, 0.3)]


def test_an_unknown_model_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not 'whisper-base' and not a folder with a CTranslate2 model.bin"):
        resolve_asr_model(str(tmp_path))


def test_word_error_rate_counts_edits_over_reference_words():
    from sdt_ray.heard import word_error_rate

    # "the cat sat" -> "The cat, sat down": one insertion over 3 words; case and punctuation ignored.
    assert word_error_rate("the cat sat", "The cat, sat down") == pytest.approx(1 / 3)
    # one substitution (sat -> sit) and one deletion (mat) over 5 words
    assert word_error_rate("the cat sat on mat", "the cat sit on") == pytest.approx(2 / 5)
    assert word_error_rate("", "anything") == 1.0  # nothing to match: every heard word is an insertion


def test_a_gold_turn_is_matched_by_the_heard_turn_overlapping_half_of_it():
    from sdt_ray.heard import Span, match_turns

    gold = [Span(0.0, 2.0), Span(3.0, 4.0), Span(6.0, 8.0)]
    heard = [Span(0.5, 2.5), Span(3.6, 5.0), Span(5.0, 7.2)]
    # gold 0: 1.5 s of 2 covered; gold 1: 0.4 s of 1 (under half); gold 2: 1.2 s of 2.
    assert match_turns(gold, heard) == {0: 0, 2: 2}
