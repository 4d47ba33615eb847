"""Dialogue windows (windows.py) on hand-made token ids: the cuts, the centred layout that
`extract` builds, the same layout inside a training window, the batch's pools, and the
epoch's exact step count; then the table side (context column, train dialogues) and the
classifier's pooling of several utterances per sequence."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from sdt_ray.text_card import TextInput, context_texts
from sdt_ray.text_classifier import UtteranceClassifier, window_rows
from sdt_ray.windows import (
    Specials,
    batch,
    centred,
    cut,
    decode_context,
    epoch_batches,
    laid_out,
    plan_steps,
    side_cap,
    training_windows,
)

SPECIAL = Specials(cls=100, sep=101, pad=0)


def test_cuts_fill_each_window_up_to_the_limit():
    # [CLS] + (3 + [SEP]) + (3 + [SEP]) = 9 tokens: two turns of 3 per window of 9
    assert cut([3, 3, 3, 3], 9) == [(0, 2), (2, 4)]
    assert cut([3, 3, 3, 3], 9, first_budget=5) == [(0, 1), (1, 3), (3, 4)]  # the first window ends early
    assert cut([20, 1], 9) == [(0, 1), (1, 2)]  # a turn over the limit stands alone (turn_ids cut it)
    assert cut([], 9) == []


def test_centred_window_takes_the_nearest_turns_past_first_until_one_does_not_fit():
    # budget 10 - [CLS] - 2 target tokens - its [SEP] = 6; past [1] costs 2, future [3] costs 2,
    # then past [2, 2] would cost 3 > 2: the past side stops; the future has nothing more.
    sequence, span = centred([7, 7], before=[[1], [2, 2]], after=[[3]], max_length=10, special=SPECIAL)
    assert sequence == [100, 1, 101, 7, 7, 101, 3, 101] and span == (3, 5)
    alone, span = centred([7, 7], [], [], 10, SPECIAL)
    assert alone == [100, 7, 7, 101] and span == (1, 3)


def test_a_training_window_lays_a_turn_out_as_extract_does():
    """The turn [7, 7] with one turn before and one after, inside a training window, is the
    very sequence `extract` builds for it (what makes the two agree)."""
    sequence, spans = laid_out([[1], [7, 7], [3]], SPECIAL)
    assert (sequence, spans[1]) == centred([7, 7], [[1]], [[3]], 10, SPECIAL)
    assert spans == [(1, 2), (3, 5), (6, 7)]


def test_the_batch_pools_each_target_over_its_own_tokens():
    tokens, pool = batch([[100, 5, 101], [100, 6, 6, 101, 8, 101]], [[(1, 2)], [(1, 3), (4, 5)]], pad=0)
    assert tokens["input_ids"].tolist() == [[100, 5, 101, 0, 0, 0], [100, 6, 6, 101, 8, 101]]
    assert tokens["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert pool.shape == (3, 2, 6)
    assert pool[0, 0].tolist() == [0, 1, 0, 0, 0, 0] and pool[0, 1].sum() == 0
    assert pool[1, 1].tolist() == [0, 1, 1, 0, 0, 0] and pool[2, 1].tolist() == [0, 0, 0, 0, 1, 0]


def dialogues():
    """Two dialogues of 1-token turns; -1 marks a context-only turn."""
    return [([[1]] * 6, [0, 1, -1, 2, 0, 1]), ([[2]] * 4, [-1, -1, -1, -1])]


def test_windows_without_a_labelled_turn_are_skipped_and_steps_are_exact():
    rng = np.random.default_rng(0)
    drawn = training_windows(dialogues(), max_length=5, rng=rng)  # 2 one-token turns per window
    assert drawn and all(d == 0 for d, _, _ in drawn)  # the second dialogue has no label
    assert sum(e - s for _, s, e in drawn) == 6  # the first dialogue's turns, each once
    per_step, steps = plan_steps(dialogues(), max_length=5, batch_size=2, workers=1, seed=0)
    batches = list(epoch_batches(dialogues(), 5, per_step=1, steps=7, special=SPECIAL, rng=np.random.default_rng(1)))
    assert len(batches) == 7  # more than one draw of cuts holds: drawn again, stopped at exactly 7
    assert all(len(b) == 1 and b[0].labels for b in batches)
    assert sorted({label for b in batches for w in b for label in w.labels}) == [0, 1, 2]
    assert per_step >= 1 and steps >= 1
    with pytest.raises(ValueError, match="no labelled turn"):
        next(epoch_batches([dialogues()[1]], 5, 1, 1, SPECIAL, np.random.default_rng(0)))


def test_plan_steps_fills_a_step_with_about_the_batch_size():
    # 8 one-token turns, all labelled, max_length 5: windows of 2 turns; a step of 4 targets = 2 windows
    one = [([[1]] * 8, [0] * 8)]
    drawn = training_windows(one, 5, np.random.default_rng(0))
    per_step, steps = plan_steps(one, max_length=5, batch_size=4, workers=1, seed=0)
    assert per_step == round(4 * len(drawn) / 8) and steps == len(drawn) // per_step


def table() -> pa.Table:
    return pa.table({
        "dialogue_id": ["a", "a", "a", "a", "b"],
        "utterance_index": [0, 1, 2, 3, 0],
        "speaker": ["Ann", "Bob", "Ann", "Bob", "Cy"],
        "text": ["one", "two", "  ", "four", "solo"],
        "label": ["joy", None, "anger", "neutral", "joy"],
        "split": ["train", "train", "train", "train", "train"],
    })


def test_the_context_column_holds_the_turns_around_nearest_first():
    contexts = context_texts(table(), TextInput(speakers=True, separator="</s>", window=2))
    before, after = decode_context(contexts[1])
    assert before == ["Ann: one"] and after == ["Ann: ", "Bob: four"]
    before, after = decode_context(contexts[3])
    assert before == ["Ann: ", "Bob: two"] and after == []  # nearest first, capped at 2 a side
    assert json.loads(contexts[4]) == [[], []]
    assert side_cap(128) == 62


def test_train_dialogues_keep_every_turn_and_label_only_the_usable_ones():
    rows = window_rows(table(), ["neutral", "joy", "anger"], TextInput(speakers=True, window=3))
    assert rows.column("dialogue_id").to_pylist() == ["a", "b"]
    assert rows.column("turns").to_pylist()[0] == ["Ann: one", "Bob: two", "Ann: ", "Bob: four"]
    assert rows.column("labels").to_pylist() == [[1, -1, -1, 0], [1]]  # no label; blank text


def test_the_classifier_pools_several_utterances_of_one_sequence():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=120, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    classifier = UtteranceClassifier(encoder, n_classes=3, dropout=0.0).eval()
    tokens, pool = batch([[100, 5, 6, 101, 8, 101]], [[(1, 3), (4, 5)]], pad=0)
    output = classifier(tokens, pool)
    logits = output.logits
    hidden = encoder(**tokens).last_hidden_state[0]  # (T, H)
    by_hand = torch.stack([hidden[1:3].mean(0), hidden[4]])  # each utterance's own tokens
    assert logits.shape == (2, 3)
    assert torch.allclose(logits, classifier.head(by_hand), atol=1e-6)
    assert torch.allclose(output.pooled, by_hand, atol=1e-6)
