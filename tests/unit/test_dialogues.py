"""From utterance rows to whole dialogues: speaker ids, checks, shards, dev carving."""

import dataclasses

import numpy as np
import pyarrow.compute as pc
import pytest
from tests.helpers.synthetic import LABELS, features_table, with_values

from sdt_ray.collate import batches, relative_speaker_ids
from sdt_ray.config import ModelConfig
from sdt_ray.dialogues import dialogue_rows, label_indices, select_split, to_dialogues, usable_rows
from sdt_ray.errors import InputError
from sdt_ray.training_data import carve_dev, shard_dialogues

CONFIG = ModelConfig(input_dims=(16,), n_classes=3, class_names=tuple(LABELS), max_speakers=3)


def test_relative_speaker_ids_follow_first_appearance_and_cap():
    ids = relative_speaker_ids(["Bob", "Ann", "Bob", "Cy", "Dee", "Ann"], max_speakers=3)
    assert ids.tolist() == [0, 1, 0, 2, 2, 1]


def test_dialogue_rows_round_trip_keeps_order_and_vectors():
    table = features_table()
    train = select_split(table, "train", "t")
    rows = dialogue_rows(train, CONFIG, LABELS, "t")
    dialogues = to_dialogues(rows, CONFIG)
    assert rows.num_rows == 24 and sum(len(d) for d in dialogues) == train.num_rows
    first = train.filter(pc.equal(train.column("dialogue_id"), dialogues[0].dialogue_id))
    first = first.sort_by("utterance_index")
    expected = np.stack(first.column("text_features").to_pylist()).astype(np.float32)
    np.testing.assert_array_equal(dialogues[0].features["text"], expected)
    assert dialogues[0].labels.tolist() == [LABELS.index(v) for v in first.column("label").to_pylist()]


def test_duplicate_utterance_index_is_a_clear_error():
    table = features_table()
    index = table.column("utterance_index").to_pylist()
    index[1] = index[0]  # second utterance of the first dialogue repeats position 0
    table = with_values(table, "utterance_index", index)
    with pytest.raises(InputError, match=r"feats.parquet: 1 duplicate \(dialogue_id, utterance_index\) pairs, e.g. train_000#0"):
        dialogue_rows(table, CONFIG, LABELS, "feats.parquet")


def test_unknown_label_is_a_clear_error():
    table = features_table()
    labels = table.column("label").to_pylist()
    labels[3] = "ecstatic"
    table = with_values(table, "label", labels)
    with pytest.raises(InputError, match=r"unknown label \['ecstatic'\] in column 'label'"):
        label_indices(table, LABELS, "feats.parquet")


def test_empty_split_is_a_clear_error():
    table = features_table({"train": 3, "dev": 1})
    with pytest.raises(InputError, match=r"split 'test' is empty \(splits present: \['dev', 'train'\]\)"):
        select_split(table, "test", "feats.parquet")


def test_unusable_rows_are_counted_not_silently_dropped():
    table = features_table()
    vectors = np.stack(table.column("text_features").to_pylist()).astype(np.float32)
    vectors[0, 3] = np.nan
    errors = [[] for _ in range(table.num_rows)]
    errors[5] = [{"modality": "text", "reason": "empty_text", "detail": ""}]
    errors[6] = [{"modality": "audio", "reason": "silence", "detail": ""}]  # a modality the model does not use
    from sdt_ray.schema import vector_array

    table = table.set_column(table.column_names.index("text_features"), "text_features", vector_array(vectors))
    table = with_values(table, "errors", errors)
    kept, exclusions = usable_rows(table, ("text",))
    assert kept.num_rows == table.num_rows - 2
    assert exclusions.counts == {"with extraction errors": 1, "with non-finite text features": 1}
    assert "1 with extraction errors" in exclusions.describe()


def test_shards_hold_whole_dialogues_and_balance_utterances():
    rows = dialogue_rows(select_split(features_table(), "train", "t"), CONFIG, LABELS, "t")
    shards = shard_dialogues(rows, 2)
    ids = [set(s.column("dialogue_id").to_pylist()) for s in shards]
    assert ids[0].isdisjoint(ids[1]) and len(ids[0] | ids[1]) == rows.num_rows
    loads = [pc.sum(pc.list_value_length(s.column("speakers"))).as_py() for s in shards]
    assert abs(loads[0] - loads[1]) <= 6  # within one dialogue's length
    with pytest.raises(InputError, match="cannot feed 30 workers"):
        shard_dialogues(rows, 30)


def test_carved_dev_split_is_by_dialogue_and_seeded():
    train = select_split(features_table({"train": 20}), "train", "t")
    kept, dev = carve_dev(train, 0.1, seed=3)
    dev_ids = set(dev.column("dialogue_id").to_pylist())
    assert len(dev_ids) == 2
    assert dev_ids.isdisjoint(kept.column("dialogue_id").to_pylist())
    assert kept.num_rows + dev.num_rows == train.num_rows
    assert dev_ids == set(carve_dev(train, 0.1, seed=3)[1].column("dialogue_id").to_pylist())


def test_batches_never_split_a_dialogue():
    dialogues = to_dialogues(dialogue_rows(select_split(features_table(), "train", "t"), CONFIG, LABELS, "t"), CONFIG)
    for batch in batches(dialogues, 5, CONFIG.max_speakers, shuffle=True, seed=1):
        lengths = batch.mask.sum(1).tolist()
        for dialogue_id, n in zip(batch.dialogue_ids, lengths):
            assert n == len(next(d for d in dialogues if d.dialogue_id == dialogue_id))


def test_fixed_speaker_table_for_parity():
    config = dataclasses.replace(CONFIG, speaker_mode="fixed", speaker_names=("Cy", "Ann", "Bob"))
    rows = dialogue_rows(select_split(features_table(), "train", "t"), config, LABELS, "t")
    table = select_split(features_table(), "train", "t").sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    names = table.column("speaker").to_pylist()
    flat = [s for row in rows.column("speakers").to_pylist() for s in row]
    assert flat == [("Cy", "Ann", "Bob").index(n) for n in names]


def test_balanced_class_weights_by_hand():
    from sdt_ray.training_data import balanced_class_weights

    # freq = (0.64, 0.16, 0.2, 0); (1/freq)^0.5 = (1.25, 2.5, 2.236); Σ freq·w = 0.8 + 0.4 + 0.447 = 1.647
    labels = np.array([0] * 16 + [1] * 4 + [2] * 5 + [-1])
    w = balanced_class_weights(labels, 4, 0.5)
    z = 0.64 * 1.25 + 0.16 * 2.5 + 0.2 * 5**0.5
    np.testing.assert_allclose(w, [1.25 / z, 2.5 / z, 5**0.5 / z, 2.5 / z], rtol=1e-6)
    assert balanced_class_weights(labels, 4, 0.0) == []


def test_too_long_dialogues_fail_before_training():
    from sdt_ray.training_data import check_dialogue_lengths

    rows = dialogue_rows(select_split(features_table(), "train", "t"), CONFIG, LABELS, "t")
    check_dialogue_lengths(rows, 6, "t")  # the synthetic dialogues have 2-6 utterances
    with pytest.raises(InputError, match=r"t: \d+ dialogue\(s\) longer than the model's max_len=3 utterances"):
        check_dialogue_lengths(rows, 3, "t")


def test_a_row_missing_one_of_several_modalities_is_kept_and_masked():
    from sdt_ray.schema import vector_array

    table = features_table({"train": 4}, dims={"text": 6, "audio": 5})
    audio = np.stack(table.column("audio_features").to_pylist()).astype(np.float32)
    valid = np.ones(table.num_rows, dtype=bool)
    valid[[1, 2]] = False  # no audio (a null vector)
    audio[3] = np.nan  # broken audio: bad data, the row is left out (as scoring calls it an error)
    table = table.set_column(table.column_names.index("audio_features"), "audio_features", vector_array(audio, valid))
    errors = [[] for _ in range(table.num_rows)]
    errors[4] = [{"modality": "text", "reason": "empty_text", "detail": ""}]  # no transcript for this turn
    errors[5] = [{"modality": "text", "reason": "empty_text", "detail": ""}, {"modality": "audio", "reason": "silence", "detail": ""}]
    table = with_values(table, "errors", errors)
    config = ModelConfig(modalities=("text", "audio"), input_dims=(6, 5), hidden=8, heads=2, n_classes=len(LABELS))
    kept, exclusions = usable_rows(table, config.modalities)
    assert kept.num_rows == table.num_rows - 2  # row 5 has nothing left, row 3 a broken vector
    assert exclusions.counts == {"with extraction errors": 1, "with non-finite text features": 0,
                                 "with non-finite audio features": 1}
    assert exclusions.absent == {"text": 1, "audio": 2}
    assert "2 kept without audio" in exclusions.describe()
    dialogues = to_dialogues(dialogue_rows(kept, config, LABELS, "t"), config)
    present_audio = np.concatenate([d.presence("audio") for d in dialogues])
    present_text = np.concatenate([d.presence("text") for d in dialogues])
    assert present_audio.sum() == kept.num_rows - 2 and present_text.sum() == kept.num_rows - 1
    audio_vectors = np.concatenate([d.features["audio"] for d in dialogues])
    assert np.isfinite(audio_vectors).all() and (audio_vectors[~present_audio] == 0).all()
    (batch,) = batches(dialogues, len(dialogues), config.max_speakers)
    assert int(batch.present["audio"].sum()) == present_audio.sum()  # padding is never present
    assert not (batch.present["audio"] & ~batch.mask).any()


def test_a_table_without_a_modality_column_is_all_absent_for_scoring():
    config = ModelConfig(modalities=("text", "audio"), input_dims=(6, 5), hidden=8, heads=2, n_classes=len(LABELS))
    table = features_table({"test": 3}, dims={"text": 6})  # no audio_features at all
    kept, exclusions = usable_rows(table, config.modalities)
    assert kept.num_rows == table.num_rows and exclusions.absent == {"text": 0, "audio": table.num_rows}
    dialogues = to_dialogues(dialogue_rows(kept, config, LABELS, "t"), config)
    assert all(not d.presence("audio").any() and d.features["audio"].shape[1] == 5 for d in dialogues)
