"""The resumable output: numbering, what counts as done, compaction; local files, no Ray."""

import numpy as np
import pyarrow as pa
import pytest

from sdt_ray import fragments, storage
from sdt_ray.errors import InputError
from sdt_ray.schema import ERROR_TYPE as ERROR


def numbered(rows_per_file=4):
    table = pa.table({"dialogue_id": ["b", "a", "a", "b", "c", "a"], "utterance_index": [1, 2, 0, 0, 0, 1]})
    table = table.append_column("errors", pa.array([[]] * 6, pa.list_(ERROR)))
    return fragments.number_rows(table, rows_per_file)


def plan_for(table, rows_per_file=4):
    return fragments.Plan("f", "in", table.num_rows, rows_per_file, {})


def test_rows_are_numbered_in_dialogue_order_and_cut_into_parts():
    table = numbered()
    assert table.column("dialogue_id").to_pylist() == ["a", "a", "a", "b", "b", "c"]
    assert table.column("utterance_index").to_pylist() == [0, 1, 2, 0, 1, 0]
    assert table.column(fragments.ROW).to_pylist() == [0, 1, 2, 3, 4, 5]
    assert table.column(fragments.PART).to_pylist() == [0, 0, 0, 0, 1, 1]
    plan = plan_for(table)
    assert plan.parts == 2 and plan.part_rows(0) == 4 and plan.part_rows(1) == 2


def test_fingerprint_changes_with_rows_and_options():
    table = numbered()
    base = fragments.fingerprint(table, {"modalities": ["text"]})
    assert base == fragments.fingerprint(table, {"modalities": ["text"]})
    assert base != fragments.fingerprint(table, {"modalities": ["audio"]})
    assert base != fragments.fingerprint(table.slice(1), {"modalities": ["text"]})


def test_done_rows_and_compaction_keep_one_row_each(tmp_path):
    out = str(tmp_path / "features")
    table = numbered()
    plan = plan_for(table)
    # Batch 1 wrote rows 0, 1 and 4 (parts 0 and 1); a retried batch wrote row 1 again.
    fragments.write_fragments(table.take([0, 1, 4]), out, "run1")
    fragments.write_fragments(table.take([1]), out, "run1")
    assert fragments.done_rows(out, plan).tolist() == [True, True, False, False, True, False]
    fragments.write_fragments(table.take([2, 3, 5]), out, "run2")
    assert fragments.fragment_parts(out) == [0, 1]
    fragments.compact_part(out, plan, 0, {b"k": b"v"}, "run2")
    part = storage.read_table(storage.join(out, "part-00000.parquet"))
    assert part.column("dialogue_id").to_pylist() == ["a", "a", "a", "b"]
    assert part.column("utterance_index").to_pylist() == [0, 1, 2, 0]
    assert fragments.ROW not in part.column_names and part.schema.metadata == {b"k": b"v"}
    assert fragments.fragment_parts(out) == [1]
    assert fragments.done_rows(out, plan).all()


def test_transient_failures_are_retried_and_the_better_copy_kept(tmp_path):
    out = str(tmp_path / "features")
    table = numbered(rows_per_file=6)
    plan = plan_for(table, rows_per_file=6)
    throttled = [{"modality": "audio", "reason": "read_error", "detail": "SlowDown"}]
    missing = [{"modality": "audio", "reason": "missing_file", "detail": ""}]
    errors = pa.array([[], throttled, missing, [], [], []], pa.list_(ERROR))
    first = table.set_column(table.column_names.index("errors"), "errors", errors)
    fragments.write_fragments(first, out, "run1")
    assert fragments.done_rows(out, plan).tolist() == [True, False, True, True, True, True]  # only row 1 again
    retried = first.take([1]).set_column(first.column_names.index("errors"), "errors", pa.array([[]], pa.list_(ERROR)))
    fragments.write_fragments(retried, out, "run2")
    fragments.compact_part(out, plan, 0, {}, "run2")
    part = storage.read_table(storage.join(out, "part-00000.parquet"))
    assert part.num_rows == 6 and part.column("errors").to_pylist()[1:3] == [[], missing]


def test_compaction_refuses_a_part_with_missing_rows(tmp_path):
    out = str(tmp_path / "features")
    table = numbered()
    fragments.write_fragments(table.take([0, 1]), out, "run1")
    with pytest.raises(InputError, match="part 0 has 2 of its 4 rows"):
        fragments.compact_part(out, plan_for(table), 0, {}, "run1")


def test_stats_count_only_this_runs_rows(tmp_path):
    out = str(tmp_path / "features")
    table = numbered().append_column("_audio_s", pa.array(np.arange(6, dtype=float)))
    table = table.append_column("_audio_cpu_s", pa.array(np.ones(6)))
    fragments.write_fragments(table.take([0, 1]), out, "old")
    fragments.write_fragments(table.take([2, 3]), out, "new")
    stats = fragments.compact_part(out, plan_for(table), 0, {}, "new")
    assert stats == {"_audio_s": 5.0, "_audio_cpu_s": 2.0}
    assert "_audio_s" not in storage.read_table(storage.join(out, "part-00000.parquet")).column_names
