"""Decoding, cutting, openSMILE and face crops on small files made here; no Ray."""

import numpy as np
import pytest

from sdt_ray.features.audio import FEATURE_SETS, AcousticEncoder, feature_set_dim
from sdt_ray.features.media import SAMPLE_RATE, MediaError, Segment, cut_audio, decode_audio, decode_frames
from sdt_ray.importers import DEMO_MEDIA
from tests.helpers.media import gray_frames, tone, voice_like, write_video, write_wav


def dominant_hz(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / SAMPLE_RATE)[spectrum.argmax()])


@pytest.fixture(scope="module")
def stereo_44k(tmp_path_factory):
    """2 s at 44.1 kHz: 440 Hz on the left channel, 1000 Hz on the right."""
    path = tmp_path_factory.mktemp("media") / "stereo.wav"
    return write_wav(path, [tone(440, 2.0, 44_100), tone(1000, 2.0, 44_100)], 44_100)


def test_audio_is_resampled_to_16k_and_keeps_channels(stereo_44k):
    audio = decode_audio(str(stereo_44k))
    assert audio.dtype == np.float32 and audio.shape[0] == 2
    assert abs(audio.shape[1] - 2 * SAMPLE_RATE) <= 0.01 * 2 * SAMPLE_RATE  # 2 s at 16 kHz, +-1%
    assert dominant_hz(audio[0]) == pytest.approx(440, abs=2)
    assert dominant_hz(audio[1]) == pytest.approx(1000, abs=2)
    assert np.abs(audio[0]).max() == pytest.approx(0.3, abs=0.02)


def test_segment_cut_and_channel_selection(stereo_44k):
    audio = decode_audio(str(stereo_44k))
    right = cut_audio(audio, Segment(str(stereo_44k), 0.5, 1.25, channel=1), "x")
    assert right.shape == (12_000,)  # 0.75 s * 16 kHz
    assert dominant_hz(right) == pytest.approx(1000, abs=4)
    mono = cut_audio(audio, Segment(str(stereo_44k)), "x")
    assert np.allclose(mono, audio.mean(axis=0))  # explicit equal-weight downmix
    with pytest.raises(MediaError) as bad_channel:
        cut_audio(audio, Segment(str(stereo_44k), channel=2), "x")
    assert bad_channel.value.reason == "bad_channel"
    with pytest.raises(MediaError) as past_end:
        cut_audio(audio, Segment(str(stereo_44k), 5.0, 6.0), "x")
    assert past_end.value.reason == "empty_segment"


@pytest.mark.parametrize(
    "segment, reason",
    [
        (Segment(None), "no_media"),
        (Segment("a.wav", 2.0, 1.0), "bad_segment"),
        (Segment("a.wav", 1.0, 1.0), "bad_segment"),
        (Segment("a.wav", float("nan"), 1.0), "bad_segment"),
        (Segment("a.wav", 1.0, float("inf")), "bad_segment"),
    ],
)
def test_bad_segments_are_named(segment, reason):
    with pytest.raises(MediaError) as err:
        segment.check("audio")
    assert err.value.reason == reason


def test_missing_corrupt_and_silent_files(tmp_path):
    with pytest.raises(MediaError) as missing:
        decode_audio(str(tmp_path / "nope.wav"))
    assert missing.value.reason == "missing_file"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(MediaError) as broken:
        decode_audio(str(corrupt))
    assert broken.value.reason == "decode_error"
    silent = decode_audio(str(write_wav(tmp_path / "silent.wav", [np.zeros(16_000, np.float32)], 16_000)))
    with pytest.raises(MediaError) as quiet:
        AcousticEncoder()(silent[0])
    assert quiet.value.reason == "silence"


def test_video_without_audio_track(tmp_path):
    path = write_video(tmp_path / "mute.mp4", gray_frames(5))
    with pytest.raises(MediaError) as err:
        decode_audio(str(path))
    assert err.value.reason == "no_audio_track"


@pytest.mark.parametrize("name", sorted(FEATURE_SETS))
def test_every_feature_set_has_its_documented_size(name):
    vector = AcousticEncoder(name)(voice_like(1.5, SAMPLE_RATE))
    assert vector.shape == (feature_set_dim(name),) and np.isfinite(vector).all()


def test_frames_are_sampled_evenly_inside_the_segment(tmp_path):
    path = write_video(tmp_path / "ramp.mp4", gray_frames(20), fps=10)  # frame i at i/10 s, brightness 10i+5
    frames = decode_frames(str(path), 0.5, 1.5, count=4)  # frames 5..14: picks 6, 8, 11, 13
    brightness = [float(f.mean()) for f in frames]
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3)
    assert brightness == pytest.approx([65, 85, 115, 135], abs=4)  # lossy codec: a few levels off
    assert len(decode_frames(str(path), None, None, count=50)) == 20  # fewer frames than asked: all of them


def test_face_is_found_in_the_demo_clips_and_centre_crop_otherwise():
    from sdt_ray.features.visual import FaceCropper

    cropper = FaceCropper(side=32)
    clip = str(DEMO_MEDIA.parent / "clips" / "dia0002_utt00.mp4")
    crops = [cropper(f) for f in decode_frames(clip, None, None, count=4)]
    assert cropper.faces_found == 4 and crops[0].shape == (32, 32, 3)
    blank = cropper(np.full((48, 80, 3), 7, np.uint8))
    assert cropper.faces_found == 4 and blank.shape == (32, 32, 3) and (blank == 7).all()


def test_face_in_a_large_frame_is_found_on_a_downscaled_copy():
    import cv2

    from sdt_ray.features.visual import FaceCropper

    face = cv2.cvtColor(cv2.imread(str(DEMO_MEDIA.parent / "face.jpg")), cv2.COLOR_BGR2RGB)  # 160 x 160
    large = np.zeros((720, 1280, 3), np.uint8)
    large[100:580, 600:1080] = cv2.resize(face, (480, 480))  # the face at 3x, off centre
    cropper = FaceCropper(side=32)
    crop = cropper(large)
    assert cropper.faces_found == 1
    assert crop.mean() > 40  # the crop is on the face, not the black background around it


def test_a_span_of_a_long_recording_decodes_alone(tmp_path):
    """decode_audio_span gives the same samples as cutting the whole decode (16 kHz: no resampling)."""
    from sdt_ray.features.media import decode_audio_span

    rng = np.random.default_rng(0)
    left, right = rng.normal(0, 0.1, 30 * SAMPLE_RATE), rng.normal(0, 0.1, 30 * SAMPLE_RATE)
    path = str(write_wav(tmp_path / "call.wav", [left.astype(np.float32), right.astype(np.float32)], SAMPLE_RATE))
    whole = decode_audio(path)
    for start, end, channel in [(0.0, 1.5, 0), (12.34, 15.0, 1), (28.0, 30.0, 0)]:
        span, origin = decode_audio_span(path, start, end)
        assert origin <= start and span.shape[1] < 4 * SAMPLE_RATE + (end - start) * SAMPLE_RATE
        ours = cut_audio(span, Segment(path, start - origin, end - origin, channel), "x")
        np.testing.assert_array_equal(ours, cut_audio(whole, Segment(path, start, end, channel), "x"))


def test_the_audio_stage_cuts_long_files_by_span_with_the_same_features(tmp_path):
    import pyarrow as pa

    from sdt_ray.features.audio import AudioFeatureStage

    voice = voice_like(6.0, SAMPLE_RATE)
    path = str(write_wav(tmp_path / "call.wav", [voice, voice[::-1].copy()], SAMPLE_RATE))
    rows = pa.table({"audio_uri": [path] * 3, "start_s": [0.5, 2.0, 4.0], "end_s": [1.8, 3.5, 5.9],
                     "channel": pa.array([0, 1, 0], pa.int16())})
    cached = AudioFeatureStage()(rows)
    by_span = AudioFeatureStage(long_file_s=1.0)(rows)  # every file counts as long
    np.testing.assert_allclose(np.stack(by_span.column("audio_features").to_pylist()),
                               np.stack(cached.column("audio_features").to_pylist()), rtol=1e-5, atol=1e-5)


def test_a_speech_encoder_folder_replaces_opensmile(tmp_path):
    """The licence-clean path: a tiny random wav2vec2 saved here, loaded as a user's model would be."""
    import pyarrow as pa

    from tests.helpers.media import save_tiny_speech_model
    from sdt_ray.features.audio import AudioFeatureStage
    from sdt_ray.features.speech import SpeechEncoder, speech_model_dim

    model = save_tiny_speech_model(tmp_path / "w2v")
    assert speech_model_dim(model) == 20
    encoder = SpeechEncoder(model)
    voice = voice_like(2.0, SAMPLE_RATE)
    vector = encoder(voice)
    assert vector.shape == (20,) and np.isfinite(vector).all()
    # A 70 s turn is encoded in 30 s pieces; its mean weighs every frame alike.
    long = np.tile(voice, 35)
    assert np.isfinite(encoder(long)).all()
    with pytest.raises(MediaError, match="too short"):
        encoder(voice[:800])
    path = str(write_wav(tmp_path / "call.wav", [voice, voice[::-1].copy()], SAMPLE_RATE))
    rows = pa.table({"audio_uri": [path, path], "start_s": [0.0, 1.0], "end_s": [1.0, 1.05], "channel": pa.array([0, 1], pa.int16())})
    out = AudioFeatureStage(speech_model=model)(rows)
    vectors = out.column("audio_features").to_pylist()
    np.testing.assert_allclose(vectors[0], encoder(decode_audio(path)[0, :SAMPLE_RATE]), atol=1e-5)  # as 16-bit PCM
    assert vectors[1] is None and out.column("errors").to_pylist()[1][0]["reason"] == "empty_segment"
