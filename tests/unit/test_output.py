"""The output mechanism: no flag deletes or mixes a user's data; plans and markers prove
what is finished. Local files, no Ray."""

import json
import os

import pyarrow as pa
import pytest

from sdt_ray import output, storage
from sdt_ray.errors import InputError
from sdt_ray.tasks import combined_sha256

def QUIET(message):
    pass


def plan(rows=(4, 2), inputs=None, **options):
    return output.Plan("extract", inputs or [], options, list(rows))


def test_an_output_that_is_inside_or_contains_an_input_is_refused():
    output.check_separate("/data/out", {"--input": "/data/in"})  # siblings are fine
    output.check_separate("s3://b/out", {"--input": "/data/out"})  # another filesystem
    for out, given in [("/data/in", "/data/in"), ("/data/in/features", "/data/in"), ("/data", "/data/in/utt.parquet"),
                       ("s3://b/x/", "s3://b/x"), ("s3://b/x/preds", "s3://b/x"), ("s3://b", "s3://b/x/utt.parquet")]:
        with pytest.raises(InputError, match="--output .* --input"):
            output.check_separate(out, {"--input": given})
    with pytest.raises(InputError, match="lies inside --checkpoint"):
        output.check_separate("/m/ckpt/preds", {"--input": "/d/f", "--checkpoint": "/m/ckpt"})


def test_a_new_output_gets_its_marker_and_plan(tmp_path):
    out = str(tmp_path / "features")
    opened = output.open_output(out, plan(), "_extract.json", overwrite=False, log=QUIET)
    assert sorted(os.listdir(out)) == ["_extract.json", output.MARKER]
    assert output.read_plan(out, "_extract.json") == opened and not opened.complete
    markers = {p: {"rows": n, "input_sha256": f"{p}" * 64} for p, n in enumerate(opened.part_rows)}
    output.complete(out, opened, "_extract.json", markers)
    finished = output.read_plan(out, "_extract.json")
    assert finished.complete and finished.extra["input_sha256"] == combined_sha256([m["input_sha256"] for m in markers.values()])
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        output.open_output(out, plan(), "_extract.json", overwrite=False, log=QUIET)
    assert output.open_output(out, plan(rows=(1,)), "_extract.json", overwrite=True, log=QUIET).part_rows == [1]


def test_overwrite_never_deletes_what_sdt_ray_did_not_write(tmp_path):
    """`extract --input dir/utt.parquet --output dir --overwrite` once deleted the input and a neighbour."""
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "utt.parquet").write_bytes(b"user data")
    (folder / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="already holds files that sdt-ray did not write \\(notes.txt, utt.parquet\\)"):
            output.open_output(str(folder), plan(), "_extract.json", overwrite=overwrite, log=QUIET)
    assert sorted(os.listdir(folder)) == ["notes.txt", "utt.parquet"]
    single = tmp_path / "table.parquet"
    single.write_bytes(b"a file")
    with pytest.raises(InputError, match="is an existing file"):
        output.open_output(str(single), plan(), "_extract.json", overwrite=True, log=QUIET)
    assert single.read_bytes() == b"a file"


def test_overwrite_refuses_our_folder_once_a_user_put_a_file_in_it(tmp_path):
    out = str(tmp_path / "features")
    output.complete(out, output.open_output(out, plan(), "_extract.json", False, QUIET), "_extract.json", {})
    storage.write_table(pa.table({"x": [1]}), storage.join(out, "part-00000.parquet"))
    (tmp_path / "features" / "label=joy").mkdir()
    (tmp_path / "features" / "label=joy" / "part-00000.parquet").write_bytes(b"ours by name")
    (tmp_path / "features" / "label=joy" / "summary.csv").write_text("theirs")
    with pytest.raises(InputError, match="also holds label=joy/summary.csv, which sdt-ray did not write"):
        output.open_output(out, plan(), "_extract.json", overwrite=True, log=QUIET)
    assert (tmp_path / "features" / "part-00000.parquet").exists()
    os.remove(tmp_path / "features" / "label=joy" / "summary.csv")
    output.open_output(out, plan(), "_extract.json", overwrite=True, log=QUIET)
    assert sorted(os.listdir(out)) == ["_extract.json", output.MARKER]


def test_a_corrupt_plan_is_one_line_and_overwrite_recovers(tmp_path):
    out = str(tmp_path / "features")
    output.open_output(out, plan(), "_extract.json", False, QUIET)
    (tmp_path / "features" / "_extract.json").write_text('{"job": "extract", "inp')  # truncated
    with pytest.raises(InputError, match="_extract.json: not a readable sdt-ray plan .*pass --overwrite"):
        output.open_output(out, plan(), "_extract.json", overwrite=False, log=QUIET)
    assert output.open_output(out, plan(), "_extract.json", overwrite=True, log=QUIET).part_rows == [4, 2]


def test_killed_before_the_first_plan_was_in_place_starts_afresh(tmp_path):
    """SIGKILL between the marker and the plan, or with the plan written aside, not yet moved."""
    out = str(tmp_path / "features")
    storage.write_text(storage.join(out, output.MARKER), "{}")
    (tmp_path / "features" / f"._extract.json.{'0' * 32}.tmp").write_text('{"job": "ext')
    assert output.open_output(out, plan(), "_extract.json", overwrite=False, log=QUIET).part_rows == [4, 2]
    assert output.read_plan(out, "_extract.json").part_rows == [4, 2]


def test_another_jobs_output_is_not_taken_over_without_overwrite(tmp_path):
    out = str(tmp_path / "features")
    output.complete(out, output.open_output(out, plan(), "_extract.json", False, QUIET), "_extract.json", {})
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        output.open_output(out, plan(), "_predict.json", overwrite=False, log=QUIET)
    assert os.path.exists(tmp_path / "features" / "_extract.json")


def test_a_resumed_run_names_the_input_file_that_changed(tmp_path):
    source = tmp_path / "utt.parquet"
    storage.write_table(pa.table({"x": [1, 2]}), str(source))
    before = plan(inputs=[output.file_facts(str(source), 2)])
    out = str(tmp_path / "features")
    output.open_output(out, before, "_extract.json", False, QUIET)
    said = []
    assert output.open_output(out, plan(inputs=[output.file_facts(str(source), 2)]), "_extract.json", False, said.append) == before
    assert said == [f"resuming the unfinished run in {out}"]
    storage.write_table(pa.table({"x": [1, 2, 3]}), str(source))
    with pytest.raises(InputError, match=f"but input file {source} changed \\(size, mtime, rows\\)"):
        output.open_output(out, plan(inputs=[output.file_facts(str(source), 3)]), "_extract.json", False, QUIET)
    with pytest.raises(InputError, match="options differ \\(batch\\)"):
        output.open_output(out, plan(inputs=before.inputs, batch=2), "_extract.json", False, QUIET)


def test_a_part_is_finished_only_with_a_marker_of_its_row_count(tmp_path):
    out = str(tmp_path / "predictions")
    p = plan(rows=(4, 2, 3))
    storage.write_table(pa.table({"x": pa.array([], pa.int64())}), storage.join(out, "part-00000.parquet"))  # a failed S3 write's leftover
    output.mark_done(out, 1, 2, {"errors": {"a": 1}})
    output.mark_done(out, 2, 1)  # a marker that disagrees with the plan
    storage.write_text(storage.join(out, output.DONE, "part-00003.json"), "{trunc")
    assert output.part_done(out, p, 0) is None and output.part_done(out, p, 2) is None
    assert list(output.finished_parts(out, p)) == [1]
    assert output.summed(output.finished_parts(out, p).values(), "errors") == {"a": 1}


def test_a_write_that_fails_leaves_nothing_at_the_final_name(tmp_path):
    target = tmp_path / "part-00000.parquet"

    def failing(fs, staging):
        with fs.open_output_stream(staging) as out:
            out.write(b"PAR1 half a file")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        storage._write_atomically(str(target), failing)
    assert os.listdir(tmp_path) == []
    storage.write_text(str(tmp_path / "plan.json"), json.dumps({"a": 1}))
    assert os.listdir(tmp_path) == ["plan.json"]
