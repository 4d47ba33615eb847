"""Speech recognition for calls without a transcript: Whisper (faster-whisper on CTranslate2)
per channel, with Silero VAD, word timestamps cutting turns at pauses. Pure Python: Ray runs
it in pipelines/calls.py, one model per actor.

    recording --(energy levels, streamed)--> spans of at most span_s, cut where both channels are quiet
    span --(decode only that span)--> per channel: VAD + Whisper --> words with times
    words of a channel --(pause >= pause_s)--> turns: start, end, text, confidence

Memory stays flat however long the call: one span of audio (span_s x 16 kHz x 4 bytes per
channel, 38 MB for 10 minutes of stereo) is decoded at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .features.media import SAMPLE_RATE, decode_audio_span

DEFAULT_ASR_MODEL = "whisper-base"


@dataclass(frozen=True)
class AsrOptions:
    model: str = DEFAULT_ASR_MODEL  # `whisper-base` (the bundled pieces) or a local CTranslate2 folder
    language: str | None = "en"  # None: Whisper detects it per span
    beam_size: int = 1  # greedy: 4.3x real time on 2 cores at a word error rate of 0.40 on the demo calls
    pause_s: float = 0.8  # a pause this long between two words of a channel ends a turn
    span_s: float = 600.0  # audio decoded at a time, seconds
    all_calls: bool = False  # recognise calls that have a usable transcript too
    low_confidence_logprob: float = -1.0  # a turn's mean log-probability under this is marked low (report)

    def __post_init__(self) -> None:
        if self.language == "auto":  # the CLI's word for Whisper's own detection
            object.__setattr__(self, "language", None)


@dataclass
class HeardWord:
    start_s: float
    end_s: float
    text: str
    probability: float
    logprob: float  # its segment's average log-probability
    no_speech: float  # its segment's no-speech probability


@dataclass
class HeardTurn:
    start_s: float
    end_s: float
    channel: int
    text: str
    logprob: float  # mean of its words' segment log-probabilities
    no_speech: float  # highest no-speech probability among its segments


def resolve_asr_model(name: str) -> str:
    """The model's local folder: the bundled pieces joined into the cache (pieces.py), or a
    folder holding a CTranslate2 Whisper (model.bin beside config.json). Nothing downloads."""
    if name == DEFAULT_ASR_MODEL:
        from .pieces import WHISPER_BASE, model_folder

        return str(model_folder(WHISPER_BASE))
    if os.path.isfile(os.path.join(name, "model.bin")):
        return name
    raise ConfigError(f"--asr {name}: not '{DEFAULT_ASR_MODEL}' and not a folder with a CTranslate2 model.bin")


class Recogniser:
    """Loads the Whisper model once (per actor); `call(uri, levels, duration)` -> its turns."""

    def __init__(self, options: AsrOptions = AsrOptions(), device: str = "cpu", threads: int = 1):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ConfigError("--asr needs faster-whisper: install sdt-ray with its [asr] extra") from None
        compute = "float16" if device.startswith("cuda") else "int8"  # int8 on CPU: 2-3x float32's speed
        self.model = WhisperModel(resolve_asr_model(options.model), device=device, compute_type=compute,
                                  cpu_threads=threads, local_files_only=True)
        self.options = options

    def words(self, audio: np.ndarray, origin_s: float) -> list[HeardWord]:
        """Words of one channel's audio (T,) float32 at 16 kHz, timed from `origin_s`."""
        o = self.options
        # temperature 0 only: no sampling fallback, so a retried or resumed call hears the same words
        segments, _ = self.model.transcribe(audio, language=o.language, beam_size=o.beam_size, temperature=0.0,
                                            vad_filter=True, word_timestamps=True, condition_on_previous_text=False)
        return [HeardWord(origin_s + w.start, origin_s + w.end, w.word, w.probability, s.avg_logprob, s.no_speech_prob)
                for s in segments for w in (s.words or [])]  # the generator decodes as it is read

    def call(self, uri: str, levels: np.ndarray, duration_s: float, frame_s: float) -> list[HeardTurn]:
        """Every channel of a recording, span by span: turns in time order."""
        words: list[list[HeardWord]] = [[] for _ in range(levels.shape[0])]
        for start, end in speech_spans(levels, frame_s, duration_s, self.options.span_s):
            audio, origin = decode_audio_span(uri, start, end)  # (C, T) from `origin` <= start
            a, b = int(round((start - origin) * SAMPLE_RATE)), int(round((end - origin) * SAMPLE_RATE))
            for channel in range(min(audio.shape[0], len(words))):
                words[channel] += self.words(np.ascontiguousarray(audio[channel, a:b]), start)
        turns = [t for channel, heard in enumerate(words) for t in turns_from_words(heard, channel, self.options.pause_s)]
        return sorted(turns, key=lambda t: (t.start_s, t.channel))


def speech_spans(levels: np.ndarray, frame_s: float, duration_s: float, span_s: float) -> list[tuple[float, float]]:
    """[start, end) seconds covering the recording, each at most span_s long, each cut at the
    quietest frame (the louder channel's level) of the last quarter of its window, so that a
    cut falls between words."""
    loudest = levels.max(axis=0) if levels.size else np.zeros(0)  # (F,) dBFS
    spans, start = [], 0.0
    while duration_s - start > span_s:
        lo, hi = int((start + 0.75 * span_s) / frame_s), int((start + span_s) / frame_s)
        window = loudest[lo:hi]
        cut = (lo + int(np.argmin(window))) * frame_s if window.size else start + span_s
        spans.append((start, cut))
        start = cut
    spans.append((start, duration_s))
    return spans


def turns_from_words(words: list[HeardWord], channel: int, pause_s: float) -> list[HeardTurn]:
    """Consecutive words of one channel joined into turns; a pause of pause_s or more ends one."""
    turns: list[list[HeardWord]] = []
    for word in sorted(words, key=lambda w: w.start_s):
        if turns and word.start_s - turns[-1][-1].end_s < pause_s:
            turns[-1].append(word)
        else:
            turns.append([word])
    return [HeardTurn(ws[0].start_s, max(w.end_s for w in ws), channel, "".join(w.text for w in ws).strip(),
                      float(np.mean([w.logprob for w in ws])), float(max(w.no_speech for w in ws)))
            for ws in turns if "".join(w.text for w in ws).strip()]
