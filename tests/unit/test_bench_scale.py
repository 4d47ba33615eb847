"""The scale bench's inputs: long texts of the stated size in whole dialogues, and stereo MP3
calls that decode to their length with speech-like bursts on both channels; no Ray."""

import numpy as np

from benchmarks.bench_scale import TEXT_BYTES, long_text_table, write_call_mp3
from sdt_ray.features.media import audio_levels
from sdt_ray.schema import validate_utterances


def test_long_texts_come_in_whole_dialogues_of_about_two_kilobytes():
    table = validate_utterances(long_text_table(500), "bench")
    sizes = [len(t.encode()) for t in table.column("text").to_pylist()]
    assert table.num_rows == 500 and 0.8 * TEXT_BYTES < np.mean(sizes) < 1.2 * TEXT_BYTES
    ids = table.column("dialogue_id").to_pylist()
    starts = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    assert len(starts) == len(set(ids))  # each dialogue's rows together
    assert table.column("utterance_index").to_pylist()[starts[1]] == 0


def test_a_generated_call_is_stereo_mp3_of_its_length_with_turns_on_both_channels(tmp_path):
    path = tmp_path / "call.mp3"
    write_call_mp3(path, minutes=0.25, seed=1)
    import av

    with av.open(str(path)) as container:
        assert container.format.name == "mp3" and container.streams.audio[0].channels == 2
    levels, duration = audio_levels(str(path), 0.03)  # (C, F) dBFS
    assert levels.shape[0] == 2 and abs(duration - 15.0) < 0.3
    loud = (levels > -30).mean(axis=1)  # both channels speak part of the time, neither all of it
    assert ((loud > 0.2) & (loud < 0.8)).all()
