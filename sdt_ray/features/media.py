"""Decoding media segments with PyAV: audio to 16 kHz mono float32, video to RGB frames.

One library decodes everything (PyAV, FFmpeg's own decoders), and audio is
resampled explicitly to SAMPLE_RATE: no loader's default rate is ever relied on.
A failure is a MediaError whose `reason` is a short machine-readable kind
(`missing_file`, `decode_error`, ...) that lands in the features table's
`errors` column; `detail` is the human sentence.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SAMPLE_RATE = 16_000  # Hz: every acoustic feature is computed at this rate
INTERNAL_ERROR = "internal_error"  # an unexpected exception on one row; retried when the job is resumed


class MediaError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Segment:
    """Which part of a media file belongs to an utterance; None means the file's start or end."""

    uri: str | None
    start_s: float | None = None
    end_s: float | None = None
    channel: int | None = None

    def check(self, modality: str) -> None:
        if not self.uri:
            raise MediaError("no_media", f"the row has no {modality}_uri")
        start, end = self.start_s, self.end_s
        for name, value in (("start_s", start), ("end_s", end)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise MediaError("bad_segment", f"{name}={value} is not a time in seconds")
        if start is not None and end is not None and end <= start:
            raise MediaError("bad_segment", f"end_s={end} is not after start_s={start}")


def segments(batch: pa.Table, uri_column: str) -> list[Segment]:
    """One Segment per row from the media columns (missing optional columns are None)."""
    def column(name: str) -> list:
        return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows

    return [
        Segment(uri, start, end, channel)
        for uri, start, end, channel in zip(column(uri_column), column("start_s"), column("end_s"), column("channel"))
    ]


@contextlib.contextmanager
def opened(uri: str) -> Iterator[object]:
    """A path PyAV can open (local files) or a seekable remote file (s3://): PyAV reads
    only the byte ranges it decodes, so cutting one utterance out of a long recording
    does not download the whole recording."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if not uri.startswith("s3://"):
        if not os.path.isfile(uri):
            raise MediaError("missing_file", f"{uri} does not exist")
        yield uri
        return
    from .. import storage

    try:
        fs, path = storage.resolve(uri)
        remote = fs.open_input_file(path)
    except FileNotFoundError:
        raise MediaError("missing_file", f"{uri} does not exist") from None
    except Exception as exc:  # botocore's errors are not OSErrors; any of them means we could not read
        if "not found" in str(exc).lower() or "nosuchkey" in str(exc).lower():
            raise MediaError("missing_file", f"{uri} does not exist") from None
        raise MediaError("read_error", f"{uri}: {exc!r}") from None
    with remote:
        yield remote


@contextlib.contextmanager
def _stream(uri: str, kind: str) -> Iterator[tuple[object, object]]:
    """(container, first `kind` stream) of a media file; decoder failures become decode_error."""
    import av

    try:
        with opened(uri) as source, av.open(source) as container:
            streams = container.streams.audio if kind == "audio" else container.streams.video
            if not streams:
                raise MediaError(f"no_{kind}_track", f"{uri} has no {kind} stream")
            yield container, streams[0]
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        raise MediaError("decode_error", f"{uri}: {exc}") from None


def decode_audio(uri: str) -> np.ndarray:
    """The whole audio track as (channels, samples) float32 at SAMPLE_RATE."""
    import av

    with _stream(uri, "audio") as (container, stream):
        # layout=None keeps the source's channels (a channel may be selected later);
        # only the rate and the sample format change.
        resampler = av.AudioResampler(format="fltp", layout=None, rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(stream):
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))  # flush the resampler's delay
    if not chunks:
        raise MediaError("empty_segment", f"{uri}: the audio track holds no samples")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False)  # (C, T)


def audio_duration(uri: str) -> float | None:
    """Seconds, from the container's header (nothing decoded); None when it does not say."""
    with _stream(uri, "audio") as (container, stream):
        return _duration(container, stream)


def decode_audio_span(uri: str, start_s: float, end_s: float) -> tuple[np.ndarray, float]:
    """Only [start_s, end_s) of a long recording: (C, T) float32 at SAMPLE_RATE and the time in
    seconds of its first sample. Seeks to the nearest point before start_s, so a turn two hours
    into a call costs as much as one at its start."""
    import av

    with _stream(uri, "audio") as (container, stream):
        container.seek(int(max(0.0, start_s - 1.0) / stream.time_base), stream=stream, backward=True)
        resampler = av.AudioResampler(format="fltp", layout=None, rate=SAMPLE_RATE)
        chunks, origin = [], None
        for frame in container.decode(stream):
            if frame.time is None:
                raise MediaError("decode_error", f"{uri}: frames carry no timestamps; cannot cut by time")
            frame_end = frame.time + frame.samples / frame.sample_rate
            if frame_end <= start_s:
                continue
            origin = frame.time if origin is None else origin
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            if frame_end >= end_s:
                break
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    if not chunks:
        raise MediaError("empty_segment", f"{uri}: no audio in [{start_s}, {end_s}) s")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), float(origin)


def audio_levels(uri: str, frame_s: float = 0.03) -> tuple[np.ndarray, float]:
    """Per channel, the RMS level of each `frame_s` frame in dBFS, (C, F) float32, and the
    file's duration in seconds. Streams the file: a 2-hour call never sits in memory whole
    (at 16 kHz a stereo float32 copy would be 920 MB), only its 480,000 frame levels."""
    import av

    hop = int(round(frame_s * SAMPLE_RATE))
    with _stream(uri, "audio") as (container, stream):
        resampler = av.AudioResampler(format="fltp", layout=None, rate=SAMPLE_RATE)
        levels, carry, total = [], None, 0
        frames = (f for decoded in container.decode(stream) for f in resampler.resample(decoded))
        for frame in itertools.chain(frames, resampler.resample(None)):
            samples = frame.to_ndarray()  # (C, n)
            total += samples.shape[1]
            carry = samples if carry is None else np.concatenate([carry, samples], axis=1)
            usable = carry.shape[1] // hop * hop
            if usable:
                blocks = carry[:, :usable].reshape(carry.shape[0], -1, hop)  # (C, F', hop)
                levels.append(10 * np.log10(np.mean(blocks.astype(np.float64) ** 2, axis=2) + 1e-12))
                carry = carry[:, usable:]
    if not total:
        raise MediaError("empty_segment", f"{uri}: the audio track holds no samples")
    return np.concatenate(levels, axis=1).astype(np.float32), total / SAMPLE_RATE


def cut_audio(audio: np.ndarray, segment: Segment, source: str) -> np.ndarray:
    """(C, T) -> mono (T',) float32 for [start_s, end_s), one channel or the channel mean."""
    channels, total = audio.shape
    start = 0 if segment.start_s is None else int(round(segment.start_s * SAMPLE_RATE))
    end = total if segment.end_s is None else min(total, int(round(segment.end_s * SAMPLE_RATE)))
    if end <= start:
        raise MediaError(
            "empty_segment", f"{source}: [{segment.start_s}, {segment.end_s}) s holds no audio (file is {total / SAMPLE_RATE:.2f} s)"
        )
    if segment.channel is not None:
        if not 0 <= segment.channel < channels:
            raise MediaError("bad_channel", f"{source}: channel {segment.channel} of a {channels}-channel file")
        return np.ascontiguousarray(audio[segment.channel, start:end])  # (T',)
    return audio[:, start:end].mean(axis=0)  # (T',): explicit downmix, equal weights


def decode_frames(uri: str, start_s: float | None, end_s: float | None, count: int) -> list[np.ndarray]:
    """Up to `count` RGB frames (H, W, 3) uint8, evenly spaced in time over [start_s, end_s).

    Frames are decoded in order and only the picked ones are kept, so a long
    segment costs decoding time, not memory. A segment with fewer frames than
    `count` gives all of them; none is an error.
    """
    start = start_s or 0.0
    with _stream(uri, "video") as (container, stream):
        # Times count from the stream's first frame, as audio counts from its first sample
        # (MPEG-TS streams, for one, start at 1.4 s).
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        if start > 0 and stream.time_base:
            container.seek(int((start + origin) / stream.time_base), stream=stream, backward=True)
        end = end_s if end_s is not None else _duration(container, stream)
        images = _pick_frames(container.decode(stream), start, end, count, origin)
    if not images:
        raise MediaError("empty_segment", f"{uri}: no video frames in [{start_s}, {end_s}) s")
    return images


def _duration(container, stream) -> float | None:
    """Seconds, from the stream or the container header; None when neither says."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds (AV_TIME_BASE)
    return None


def _pick_frames(frames, start: float, end: float | None, count: int, origin: float = 0.0) -> list[np.ndarray]:
    """For each of `count` target times, the last frame shown at or before it; each frame once."""
    if end is None:
        return _thin_out(frames, start, count, origin)
    targets = [start + (k + 0.5) * (end - start) / count for k in range(count)]
    picked, previous, k = [], None, 0
    for frame in frames:
        t = frame.time - origin if frame.time is not None else start
        if t < start:
            continue
        if t >= end or k == count:
            break
        while k < count and targets[k] < t:
            if previous is not None and (not picked or picked[-1] is not previous):
                picked.append(previous)
            k += 1
        previous = frame
    if previous is not None and k < count and (not picked or picked[-1] is not previous):
        picked.append(previous)  # targets past the last frame
    return [f.to_ndarray(format="rgb24") for f in picked]


def _thin_out(frames, start: float, count: int, origin: float) -> list[np.ndarray]:
    """Unknown length (e.g. WebM without a duration): keep every stride-th frame, doubling
    the stride whenever more than 2 * count are held, so memory stays O(count)."""
    kept, stride, seen = [], 1, 0
    for frame in frames:
        if frame.time is not None and frame.time - origin < start:
            continue
        if seen % stride == 0:
            kept.append(frame)
            if len(kept) > 2 * count:
                kept, stride = kept[::2], stride * 2
        seen += 1
    return [kept[i].to_ndarray(format="rgb24") for i in _evenly_spaced(len(kept), count)]


def _evenly_spaced(available: int, count: int) -> list[int]:
    if available <= count:
        return list(range(available))
    return [int((i + 0.5) * available / count) for i in range(count)]
