"""Acoustic features: openSMILE functionals over each utterance's 16 kHz mono segment.

One Smile instance per actor, single-threaded: Ray supplies the parallelism.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from .media import (
    INTERNAL_ERROR, SAMPLE_RATE, MediaError, Segment, audio_duration, cut_audio, decode_audio, decode_audio_span, segments,
)

# name -> (opensmile FeatureSet member, or a config file shipped in the opensmile wheel; vector size)
FEATURE_SETS = {
    "eGeMAPSv02": ("eGeMAPSv02", 88),
    "IS10": ("is09-13/IS10_paraling_compat.conf", 1582),  # the set SDT used for IEMOCAP
    "ComParE_2016": ("ComParE_2016", 6373),
    "emobase": ("emobase", 988),
}
DEFAULT_FEATURE_SET = "eGeMAPSv02"
SILENCE_RMS = 1e-4  # below -80 dBFS the functionals describe no voice
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s: shorter segments leave openSMILE's windows empty (NaN)


def feature_set_dim(name: str) -> int:
    return FEATURE_SETS[_check_name(name)][1]


def _check_name(name: str) -> str:
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown openSMILE feature set '{name}'; choose one of {sorted(FEATURE_SETS)}")
    return name


class AcousticEncoder:
    """Mono float32 signal at SAMPLE_RATE -> (D,) functionals."""

    def __init__(self, feature_set: str = DEFAULT_FEATURE_SET):
        import opensmile

        member, self.dim = FEATURE_SETS[_check_name(feature_set)]
        if member.endswith(".conf"):
            config = os.path.join(os.path.dirname(opensmile.__file__), "core", "config", member)
        else:
            config = getattr(opensmile.FeatureSet, member)
        self.smile = opensmile.Smile(
            feature_set=config, feature_level=opensmile.FeatureLevel.Functionals, num_workers=1, multiprocessing=False
        )
        self.name = feature_set

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        if len(signal) < MIN_SAMPLES:
            raise MediaError("empty_segment", f"{len(signal) / SAMPLE_RATE:.3f} s of audio is too short to describe")
        if float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) < SILENCE_RMS:
            raise MediaError("silence", f"the segment is silent (RMS below {SILENCE_RMS:g})")
        # openSMILE scales to int16 without clipping: a codec's overshoot past 1.0 would wrap around.
        signal = np.clip(signal, -1.0, 32767 / 32768)
        values = self.smile.process_signal(signal, SAMPLE_RATE).to_numpy(dtype=np.float32)[0]  # (D,)
        if values.shape != (self.dim,):
            raise MediaError("feature_error", f"openSMILE gave {values.shape[0]} values, expected {self.dim}")
        if not np.isfinite(values).all():
            raise MediaError("feature_error", "openSMILE gave non-finite values")
        return values


class AudioFeatureStage:
    """Rows with `audio_uri` (+ start_s, end_s, channel) in; `audio_features` out, from openSMILE
    functionals or, with `speech_model`, a transformers speech encoder (features/speech.py).

    Consecutive rows often cut the same recording, so the last decoded files stay
    cached in this actor. A recording longer than `long_file_s` (a call, a meeting)
    is never decoded whole: each row decodes only its own span, so memory stays
    bounded by the longest turn, not the longest call. Adds `_audio_s` (segment
    seconds) and `_audio_cpu_s` (this thread's CPU seconds per row) for the
    job's real-time-factor summary.
    """

    def __init__(
        self, feature_set: str = DEFAULT_FEATURE_SET, cached_files: int = 2, long_file_s: float = 600.0,
        speech_model: str | None = None, threads: int = 1,
    ):
        if speech_model:  # the licence-clean path: a transformers speech encoder instead of openSMILE
            from .speech import SpeechEncoder

            self.encoder = SpeechEncoder(speech_model, threads)
        else:
            self.encoder = AcousticEncoder(feature_set)
        self.cache: OrderedDict[str, np.ndarray | MediaError | float] = OrderedDict()
        self.cached_files = cached_files
        self.long_file_s = long_file_s  # 10 min of stereo float32 at 16 kHz is 77 MB

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..schema import add_feature_column

        started = time.thread_time()
        n = batch.num_rows
        vectors = np.full((n, self.encoder.dim), np.nan, dtype=np.float32)
        errors: list[tuple[str, str] | None] = [None] * n
        seconds = np.zeros(n)
        for i, segment in enumerate(segments(batch, "audio_uri")):
            try:
                signal = self._signal(segment)
                seconds[i] = len(signal) / SAMPLE_RATE
                vectors[i] = self.encoder(signal)
            except MediaError as exc:
                errors[i] = (exc.reason, exc.detail)
            except Exception as exc:  # one odd file must not end a job of a million rows
                errors[i] = (INTERNAL_ERROR, f"{segment.uri}: {exc!r}")
        cpu = np.full(n, (time.thread_time() - started) / max(n, 1))
        batch = add_feature_column(batch, "audio", vectors, errors)
        return batch.append_column("_audio_s", pa.array(seconds)).append_column("_audio_cpu_s", pa.array(cpu))

    def _signal(self, segment: Segment) -> np.ndarray:
        """The segment's mono signal: cut from the cached file, or decoded alone from a long one."""
        decoded = self._decoded(segment)
        if isinstance(decoded, np.ndarray):
            return cut_audio(decoded, segment, segment.uri)
        if segment.start_s is None or segment.end_s is None:
            raise MediaError("bad_segment", f"{segment.uri} is {decoded / 60:.0f} min long: give start_s and end_s")
        span, origin = decode_audio_span(segment.uri, segment.start_s, segment.end_s)
        shifted = Segment(segment.uri, segment.start_s - origin, segment.end_s - origin, segment.channel)
        return cut_audio(span, shifted, segment.uri)

    def _decoded(self, segment: Segment) -> np.ndarray | float:
        """The file's decoded audio, or its length in seconds when it is too long to hold, or its
        MediaError: a broken recording is read once, not once per row."""
        segment.check("audio")
        if segment.uri not in self.cache:
            try:
                duration = audio_duration(segment.uri)
                long = duration is not None and duration > self.long_file_s
                self.cache[segment.uri] = duration if long else decode_audio(segment.uri)
            except MediaError as exc:
                self.cache[segment.uri] = exc
            while len(self.cache) > self.cached_files:
                self.cache.popitem(last=False)
        self.cache.move_to_end(segment.uri)
        decoded = self.cache[segment.uri]
        if isinstance(decoded, MediaError):
            raise decoded
        return decoded

