"""Planning tasks from key columns only, and reading a task's rows where they lie; no Ray."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.synthetic import corrupt_column
from sdt_ray import storage
from sdt_ray.errors import InputError
from sdt_ray.tasks import READ_ERROR, chunk_items, number_task, plan_input, read_slices


def utterances(ids, positions=None, texts=None):
    positions = positions if positions is not None else list(range(len(ids)))
    return pa.table({"dialogue_id": ids, "utterance_index": pa.array(positions, pa.int32()), "speaker": ["A"] * len(ids),
                     "text": texts or [f"t{i}" for i in range(len(ids))]})


def write(folder, *tables):
    for k, table in enumerate(tables):
        storage.write_table(table, str(folder / f"part-{k:05d}.parquet"))
    return str(folder)


def test_a_dialogue_across_a_file_boundary_stays_in_one_task(tmp_path):
    source = write(tmp_path, utterances(["a", "a", "b", "b"]), utterances(["b", "c", "c"]), utterances(["d"]))
    plan = plan_input(source, rows_per_task=3, rows_per_chunk=2)
    assert [t["rows"] for t in plan.tasks] == [5, 3]  # a a b b | b c c | d: a task closes after 3 rows, dialogues whole
    assert plan.tasks[0]["slices"] == [[f"{source}/part-00000.parquet", 0, 4], [f"{source}/part-00001.parquet", 0, 1]]
    assert [[c["offset"], c["rows"]] for c in plan.tasks[0]["chunks"]] == [[0, 2], [2, 3]]
    assert [[c["offset"], c["rows"]] for c in plan.tasks[1]["chunks"]] == [[0, 2], [2, 1]]
    assert [f["rows"] for f in plan.files] == [4, 3, 1] and all(f["size"] > 0 and f["mtime"] for f in plan.files)
    items = chunk_items(plan.tasks, todo=[1], resume={1})
    assert [(i["task"], i["offset"], i["chunk"], i["resume"]) for i in items] == [(1, 0, 2, True), (1, 2, 3, True)]
    rows = read_slices(plan.tasks[0]["chunks"][1]["slices"], ["dialogue_id", "text"])
    assert rows.column_names == ["dialogue_id", "text", READ_ERROR] and rows.column("text").to_pylist() == ["t2", "t3", "t0"]


@pytest.mark.parametrize("ids, positions, message", [
    (["a", None, "b"], [0, 1, 2], "column 'dialogue_id' has 1 null values"),
    (["a", "a", "b"], [0, None, 2], "column 'utterance_index' has 1 null values"),
    (["a", "b", "a"], [0, 0, 1], "column 'dialogue_id': dialogue 'a' is not contiguous"),
])
def test_null_keys_and_split_dialogues_are_one_error_naming_the_file(tmp_path, ids, positions, message):
    table = pa.table({"dialogue_id": pa.array(ids, pa.string()), "utterance_index": pa.array(positions, pa.int32())})
    source = write(tmp_path, table)
    with pytest.raises(InputError, match=f"part-00000.parquet: {message}"):
        plan_input(source, 10)


def test_a_dialogue_in_two_files_with_another_between_is_refused(tmp_path):
    source = write(tmp_path, utterances(["a", "b"]), utterances(["a"]))
    with pytest.raises(InputError, match="part-00001.parquet: column 'dialogue_id': dialogue 'a' is not contiguous"):
        plan_input(source, 10)


def test_an_unreadable_row_group_becomes_rows_with_their_keys_and_a_reason(tmp_path):
    path = str(tmp_path / "utt.parquet")
    pq.write_table(utterances(["a"] * 3 + ["b"] * 3, texts=[f"hello {i} " * 20 for i in range(6)]), path, row_group_size=3)
    corrupt_column(path, 1, "text")
    plan = plan_input(path, 10)  # the keys still read: the plan does not see it
    rows = read_slices(plan.tasks[0]["slices"], ["dialogue_id", "utterance_index", "text"])
    assert rows.num_rows == 6 and rows.column("dialogue_id").to_pylist() == ["a"] * 3 + ["b"] * 3
    assert rows.column("text").to_pylist()[:3] == [f"hello {i} " * 20 for i in range(3)]
    assert rows.column("text").to_pylist()[3:] == [None] * 3
    errors = rows.column(READ_ERROR).to_pylist()
    assert errors[:3] == [None] * 3 and all(e.startswith(f"{path}: row group 1: ") for e in errors[3:])


def test_a_task_keeps_its_dialogues_in_input_order_with_turns_sorted():
    table = number_task(utterances(["z", "z", "a"], positions=[1, 0, 0]), task=2, offset=10)
    assert table.column("dialogue_id").to_pylist() == ["z", "z", "a"]
    assert table.column("utterance_index").to_pylist() == [0, 1, 0]
    assert table.column("_row").to_pylist() == [10, 11, 12] and table.column("_part").to_pylist() == [2, 2, 2]
