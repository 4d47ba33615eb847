"""`import calls` on small recordings made here: tones on known channels at known times."""

import json

import pytest

from tests.helpers.media import tone_call
from sdt_ray.calls import EnergyOptions, energy_turns, import_calls
from sdt_ray.errors import InputError
from sdt_ray.features.media import audio_levels

SPANS = [(0, 0.5, 1.5), (1, 2.0, 3.0), (0, 3.2, 3.3), (0, 4.0, 4.6), (0, 4.9, 5.5)]  # 0.1 s click; 0.3 s pause


def test_energy_turns_per_channel(tmp_path):
    levels, duration = audio_levels(str(tone_call(tmp_path / "c.wav", SPANS)))
    assert levels.shape == (2, 200) and duration == pytest.approx(6.0, abs=1e-3)
    turns = energy_turns(levels, EnergyOptions(min_silence_s=0.5, min_turn_s=0.25))
    got = [(t.channel, round(t.start_s, 2), round(t.end_s, 2), t.speaker) for t in turns]
    # The click is no turn; the 0.3 s pause stays inside one turn. Times within one 30 ms frame.
    expected = [(0, 0.5, 1.5), (1, 2.0, 3.0), (0, 4.0, 5.5)]
    assert [(c, s) for c, *_, s in got] == [(0, "ch0"), (1, "ch1"), (0, "ch0")]
    for (channel, start, end, _), (c, s, e) in zip(got, expected):
        assert channel == c and abs(start - s) <= 0.03 and abs(end - e) <= 0.03


def test_a_folder_of_calls_with_every_kind_of_sidecar(tmp_path):
    tone_call(tmp_path / "a.wav", [(0, 0.5, 1.5), (1, 2.0, 3.0), (0, 3.5, 4.5)])
    (tmp_path / "a.json").write_text(json.dumps({"segments": [
        {"start": 0.5, "end": 1.5, "text": "Hello, how can I help?", "speaker": "SPEAKER_00", "label": "neutral"},
        {"start": 2.0, "end": 3.0, "text": "My order never came.", "speaker": "SPEAKER_01"},
        {"start": 3.5, "end": 4.5, "text": "I am sorry to hear that.", "speaker": "SPEAKER_00"},
    ]}))
    (tmp_path / "sub").mkdir()
    tone_call(tmp_path / "sub" / "b.wav", [(0, 0.2, 1.0)], channels=1)
    (tmp_path / "sub" / "b.csv").write_text("start,end,speaker,text\n0.2,1.0,agent,Good morning\n")
    tone_call(tmp_path / "c.wav", [(1, 1.0, 2.0), (0, 2.5, 3.5)])  # no transcript
    tone_call(tmp_path / "d.wav", [(0, 1.0, 2.0)])
    (tmp_path / "d.json").write_text("{not json")

    result = import_calls(str(tmp_path), split="test")
    table = result.table.sort_by([("dialogue_id", "ascending"), ("utterance_index", "ascending")])
    calls = table.column("dialogue_id").to_pylist()
    assert calls == ["a"] * 3 + ["c"] * 2 + ["d"] + ["sub/b"]
    rows = table.to_pylist()
    assert [r["channel"] for r in rows[:3]] == [0, 1, 0]  # the loudest channel over each turn
    assert rows[0]["label"] == "neutral" and rows[1]["label"] is None and rows[0]["split"] == "test"
    assert [(r["speaker"], r["text"]) for r in rows[3:5]] == [("ch1", None), ("ch0", None)]  # by energy, in time order
    assert rows[5]["speaker"] == "ch0" and rows[6]["channel"] is None  # d: fell back to energy; b: mono
    assert rows[6]["text"] == "Good morning" and rows[6]["audio_uri"].endswith("sub/b.wav")
    assert [p.reason for p in result.problems] == ["bad_sidecar"]
    assert "turns found by energy instead" in result.problems[0].detail
    assert result.sources == {"transcript": 2, "energy": 2}


def test_faulty_turns_are_listed_and_the_rest_imports(tmp_path):
    tone_call(tmp_path / "x.wav", [(0, 0.5, 1.5), (1, 2.0, 3.0)], seconds=4.0)
    (tmp_path / "x.json").write_text(json.dumps({"segments": [
        {"start": 0.5, "end": 1.5, "text": "one", "speaker": "A"},
        {"start": 1.0, "end": 1.8, "text": "A again, over A", "speaker": "A"},
        {"start": 1.2, "end": 2.5, "text": "B over A is normal", "speaker": "B"},
        {"start": 2.0, "text": "no end", "speaker": "B"},
        {"start": 3.0, "end": 2.0, "text": "backwards", "speaker": "B"},
        {"start": 3.5, "end": 9.0, "text": "past the end", "speaker": "B"},
        "not an object",
    ]}))
    result = import_calls(str(tmp_path))
    assert result.table.column("text").to_pylist() == ["one", "B over A is normal"]
    reasons = sorted(p.reason for p in result.problems)
    assert reasons == ["bad_segment", "bad_segment", "bad_segment", "overlap", "past_end"]
    assert all(p.call_id == "x" for p in result.problems)


def test_no_recordings_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="no recordings"):
        import_calls(str(tmp_path))


def test_files_that_are_not_imported_are_listed_by_name(tmp_path):
    """Once `e.flac` beside `e.wav` and a `.aiff` were skipped without a word."""
    tone_call(tmp_path / "e.wav", [(0, 0.5, 1.5)])
    tone_call(tmp_path / "e.flac", [(0, 0.5, 1.5)])
    tone_call(tmp_path / "f.wav", [(0, 0.5, 1.5)])
    (tmp_path / "f.aiff").write_bytes(b"FORM")
    (tmp_path / "g.json").write_text(json.dumps({"segments": []}))
    result = import_calls(str(tmp_path))
    assert set(result.table.column("dialogue_id").to_pylist()) == {"f"}
    found = {(p.call_id, p.reason): p.detail for p in result.problems}
    assert set(found) == {("e", "two_recordings"), ("f", "unknown_file"), ("g", "no_recording")}
    assert str(tmp_path / "e.wav") in found["e", "two_recordings"] and str(tmp_path / "e.flac") in found["e", "two_recordings"]
    assert str(tmp_path / "f.aiff") in found["f", "unknown_file"]


def test_a_call_whose_segments_are_all_bad_falls_back_to_energy(tmp_path):
    tone_call(tmp_path / "h.wav", [(0, 0.5, 1.5), (1, 2.0, 3.0)])
    (tmp_path / "h.json").write_text(json.dumps({"segments": [{"start": 2, "end": 1, "text": "x"}, {"text": "y"}]}))
    result = import_calls(str(tmp_path))
    assert result.table.column("speaker").to_pylist() == ["ch0", "ch1"] and result.sources == {"energy": 1}
    assert sorted(p.reason for p in result.problems) == ["bad_segment", "bad_segment", "no_usable_segments"]


def test_channels_are_range_checked(tmp_path):
    """`channel: 70000` once ended the whole import with a traceback."""
    tone_call(tmp_path / "k.wav", [(0, 0.5, 1.5), (1, 2.0, 3.0)])
    (tmp_path / "k.json").write_text(json.dumps({"segments": [
        {"start": 0.5, "end": 1.5, "text": "fine", "speaker": "A", "channel": 0},
        {"start": 2.0, "end": 3.0, "text": "too far", "speaker": "B", "channel": 70000},
        {"start": 2.0, "end": 3.0, "text": "no such channel", "speaker": "C", "channel": 2},
        {"start": 2.0, "end": 3.0, "text": "half", "speaker": "D", "channel": 1.5},
    ]}))
    result = import_calls(str(tmp_path))
    assert result.table.column("text").to_pylist() == ["fine"]
    assert [p.reason for p in result.problems] == ["bad_segment"] * 3
    assert [p.detail for p in result.problems] == [
        "segment 1: channel 70000 is not one of the recording's channels (0..1)",
        "segment 2: channel 2 is not one of the recording's channels (0..1)",
        "segment 3: channel 1.5 is not a whole number",
    ]
