"""`import calls` as a Ray Data job: parts of calls decoded on workers, problems summarised from
the parts' markers, a killed import resumed, and the archive never written into."""

import json
import os

import pytest

from tests.helpers.media import tone_call
from sdt_ray import output, storage
from sdt_ray.errors import InputError
from sdt_ray.pipelines.calls import CallImportOptions, import_calls_job

QUIET = {"log": lambda m: None}


@pytest.fixture
def archive(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    for k in range(5):
        tone_call(folder / f"c{k}.wav", [(0, 0.5, 1.5), (1, 2.0, 3.0)])
    (folder / "c1.json").write_text(json.dumps({"segments": [
        {"start": 0.5, "end": 1.5, "text": "hello", "speaker": "A"}, {"start": 2.0, "end": 9.0, "text": "x", "speaker": "B"}]}))
    tone_call(folder / "c4.flac", [(0, 0.5, 1.5)])  # a second recording of c4
    (folder / "readme.txt").write_text("not a call")
    return folder


def test_parts_of_calls_on_workers_with_every_problem_listed(ray_local, archive, tmp_path):
    out = str(tmp_path / "utterances")
    summary = import_calls_job(str(archive), out, CallImportOptions(calls_per_part=2, split="test"), **QUIET)
    assert summary.calls == 4 and summary.sources == {"energy": 3, "transcript": 1}
    assert sorted((p.call_id, p.reason) for p in summary.problems) == [
        ("c1", "past_end"), ("c4", "two_recordings"), ("readme", "unknown_file")]
    table = storage.read_table(out)
    assert table.num_rows == summary.turns == 7  # c0, c2, c3: 2 energy turns each; c1: one transcript turn
    assert set(table.column("dialogue_id").to_pylist()) == {"c0", "c1", "c2", "c3"}
    assert set(table.column("split").to_pylist()) == {"test"} and len(summary.nodes) == 1
    assert sorted(os.listdir(out)) == ["_done", "_import.json", output.MARKER, "part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        import_calls_job(str(archive), out, CallImportOptions(calls_per_part=2), **QUIET)


def test_a_killed_import_resumes_and_the_archive_is_never_the_output(ray_local, archive, tmp_path):
    out = str(tmp_path / "utterances")
    options = CallImportOptions(calls_per_part=1)
    first = import_calls_job(str(archive), out, options, **QUIET)
    plan = output.read_plan(out, "_import.json")
    plan.complete = False  # as if killed after three of the four parts
    output.write_plan(out, plan, "_import.json")
    storage.delete(storage.join(out, "part-00002.parquet"))
    storage.delete(storage.join(out, output.DONE, "part-00002.json"))
    again = import_calls_job(str(archive), out, options, **QUIET)
    assert again.resumed_parts == 3 and again.turns == first.turns and storage.read_table(out).num_rows == first.turns
    for inside in (str(archive), str(archive / "utterances")):
        with pytest.raises(InputError, match="--output .* the archive"):
            import_calls_job(str(archive), inside, CallImportOptions(overwrite=True), **QUIET)
    assert sorted(os.listdir(archive)) == ["c0.wav", "c1.json", "c1.wav", "c2.wav", "c3.wav", "c4.flac", "c4.wav", "readme.txt"]
