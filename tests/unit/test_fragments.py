"""Fragments: what counts as done, compaction into a part and its done marker; local files, no Ray."""

import numpy as np
import pyarrow as pa
import pytest

from sdt_ray import fragments, output, storage
from sdt_ray.errors import InputError
from sdt_ray.schema import ERROR_TYPE as ERROR
from sdt_ray.tasks import INPUT_SHA, combined_sha256, content_sha256, number_task

CHUNKS = ["0:" + "a" * 64] * 3 + ["3:" + "b" * 64] * 3  # two chunks of three rows, as ReadStage tags them


def numbered(task=0):
    table = pa.table({"dialogue_id": ["b", "b", "a", "a", "a", "c"], "utterance_index": [1, 0, 2, 0, 1, 0]})
    table = table.append_column("errors", pa.array([[]] * 6, pa.list_(ERROR)))
    table = number_task(table, task)
    return table.append_column(INPUT_SHA, pa.array(CHUNKS))


def plan_for(*part_rows):
    return output.Plan("extract", [], {}, list(part_rows))


def write_part(out, part):
    return fragments.write_features_part(out, part, {b"k": b"v"})


def test_a_task_is_numbered_in_dialogue_order():
    """Dialogues keep the input's order (they lie together); turns are sorted within each."""
    table = numbered(task=3)
    assert table.column("dialogue_id").to_pylist() == ["b", "b", "a", "a", "a", "c"]
    assert table.column("utterance_index").to_pylist() == [0, 1, 0, 1, 2, 0]
    assert table.column(fragments.ROW).to_pylist() == [0, 1, 2, 3, 4, 5]
    assert table.column(fragments.PART).to_pylist() == [3] * 6


def test_done_rows_and_compaction_keep_one_row_each(tmp_path):
    out = str(tmp_path / "features")
    table, plan = numbered(), plan_for(6)
    # Batch 1 wrote rows 0, 1 and 4; a retried batch wrote row 1 again.
    fragments.write_fragments(table.take([0, 1, 4]), out, "run1")
    fragments.write_fragments(table.take([1]), out, "run1")
    assert fragments.done_rows(out, 0, 6).tolist() == [True, True, False, False, True, False]
    fragments.write_fragments(table.take([2, 3, 5]), out, "run2")
    assert fragments.fragment_parts(out) == [0]
    fragments.compact_part(out, plan, 0, write_part(out, 0), "run2")
    part = storage.read_table(storage.join(out, "part-00000.parquet"))
    assert part.column("dialogue_id").to_pylist() == ["b", "b", "a", "a", "a", "c"]
    assert part.column("utterance_index").to_pylist() == [0, 1, 0, 1, 2, 0]
    assert fragments.ROW not in part.column_names and part.schema.metadata == {b"k": b"v"}
    assert fragments.fragment_parts(out) == []
    assert fragments.ROW not in part.column_names and INPUT_SHA not in part.column_names
    # The marker's input hash: the chunks' hashes in offset order, one line each.
    assert output.part_done(out, plan, 0) == {"rows": 6, "summary": {"errors": {}},
                                              "input_sha256": combined_sha256(["0:" + "a" * 64, "3:" + "b" * 64])}


def test_transient_failures_are_retried_and_the_better_copy_kept(tmp_path):
    out = str(tmp_path / "features")
    table, plan = numbered(), plan_for(6)
    throttled = [{"modality": "audio", "reason": "read_error", "detail": "SlowDown"}]
    missing = [{"modality": "audio", "reason": "missing_file", "detail": ""}]
    errors = pa.array([[], throttled, missing, [], [], []], pa.list_(ERROR))
    first = table.set_column(table.column_names.index("errors"), "errors", errors)
    fragments.write_fragments(first, out, "run1")
    assert fragments.done_rows(out, 0, 6).tolist() == [True, False, True, True, True, True]  # only row 1 again
    retried = first.take([1]).set_column(first.column_names.index("errors"), "errors", pa.array([[]], pa.list_(ERROR)))
    fragments.write_fragments(retried, out, "run2")
    fragments.compact_part(out, plan, 0, write_part(out, 0), "run2")
    part = storage.read_table(storage.join(out, "part-00000.parquet"))
    assert part.num_rows == 6 and part.column("errors").to_pylist()[1:3] == [[], missing]
    assert output.part_done(out, plan, 0)["summary"] == {"errors": {"audio:missing_file": 1}}


def test_compaction_refuses_a_part_with_missing_rows(tmp_path):
    out = str(tmp_path / "features")
    fragments.write_fragments(numbered().take([0, 1]), out, "run1")
    with pytest.raises(InputError, match="part 0 has 2 of its 6 rows"):
        fragments.compact_part(out, plan_for(6), 0, write_part(out, 0), "run1")
    assert output.part_done(out, plan_for(6), 0) is None  # no marker for a part that is not whole


def test_a_finished_part_is_not_written_again(tmp_path):
    """Killed after the done marker, before the fragments were deleted: the rerun only deletes them."""
    out = str(tmp_path / "features")
    table, plan = numbered(), plan_for(6)
    fragments.write_fragments(table, out, "run1")
    output.mark_done(out, 0, 6, {"errors": {}})
    written = []
    fragments.compact_part(out, plan, 0, lambda t: written.append(t) or {}, "run2")
    assert written == [] and fragments.fragment_parts(out) == []


def test_stats_count_only_this_runs_rows(tmp_path):
    out = str(tmp_path / "features")
    table = numbered().append_column("_audio_s", pa.array(np.arange(6, dtype=float)))
    table = table.append_column("_audio_cpu_s", pa.array(np.ones(6)))
    fragments.write_fragments(table.take([0, 1]), out, "old")
    fragments.write_fragments(table.take([2, 3, 4, 5]), out, "new")
    compacted = fragments.compact_part(out, plan_for(6), 0, write_part(out, 0), "new")
    assert compacted == {"stats": {"_audio_s": 14.0, "_audio_cpu_s": 4.0}, "changed": None}
    assert "_audio_s" not in storage.read_table(storage.join(out, "part-00000.parquet")).column_names


def test_rows_of_one_chunk_read_with_different_contents_are_not_compacted(tmp_path):
    """A resumed run read chunk 3 again and hashed it differently: the input changed under
    the resume (though its size and mtime did not), so the part is not written."""
    out = str(tmp_path / "features")
    table, plan = numbered(), plan_for(6)
    fragments.write_fragments(table.take([0, 1, 2, 3]), out, "run1")
    reread = table.take([4, 5]).set_column(table.column_names.index(INPUT_SHA), INPUT_SHA, pa.array(["3:" + "c" * 64] * 2))
    fragments.write_fragments(reread, out, "run2")
    compacted = fragments.compact_part(out, plan, 0, write_part(out, 0), "run2")
    assert compacted["changed"] == "part 0, rows [3] on"
    assert output.part_done(out, plan, 0) is None and not storage.exists(storage.join(out, "part-00000.parquet"))
    assert fragments.fragment_parts(out) == [0]  # kept: the user decides (--overwrite)


def test_content_hash_follows_the_rows_values():
    table = pa.table({"dialogue_id": ["a", "a"], "text": ["hello", "there"]})
    same = pa.table({"dialogue_id": ["a", "a"], "text": ["hello", "there"]})
    one_letter = pa.table({"dialogue_id": ["a", "a"], "text": ["hello", "thera"]})
    assert content_sha256(table) == content_sha256(same)
    assert content_sha256(table) != content_sha256(one_letter)
    assert len(content_sha256(table)) == 64
