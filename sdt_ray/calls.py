"""Call recordings to the utterances table: one row per turn, `dialogue_id` = the call.

A call is one audio file (wav, flac, mp3, ogg, opus, m4a) in a folder or under an s3://
prefix, with an optional sidecar transcript of the same name:
- `CALL.json`: whisper / WhisperX style, `segments` of start, end, text and optionally
  speaker, channel and label;
- `CALL.csv`: columns start, end, speaker, text (optionally channel, label);
- none: turns are found per channel by energy (below), speaker = the channel (`ch0`, `ch1`),
  text null. Meant for stereo calls with the agent and the customer on their own channels.

Turns of a stereo call with a transcript but no channel take the channel that is loudest
over the turn; mono calls keep channel null (the extractor reads the whole signal).

A faulty turn (no numeric start/end, end before start, past the end of the audio, a channel
the recording does not have, or overlapping an earlier turn of the same speaker) is left out
with one `Problem`; the call's other turns still import. Overlaps between speakers are normal
in calls and are kept. A sidecar that cannot be parsed at all, or whose segments are all
faulty, is one problem more, and its call's turns are then found by energy as if it had none.
Files that are not imported (a second recording of the same name, a transcript without a
recording, a file of another kind) are problems too, each naming the file.

With speech recognition (`import calls --asr`, asr.py), a call without a usable transcript (or
every call, with --asr-all) gets its turns, words and speakers from the recording: a channel is
a speaker, `--roles agent,customer` names the channels, and a mono call is one speaker lane
(no diarization model is available offline: listed as `one_speaker_lane`). `words_from` says
where each turn's words came from: transcript, asr, or null (energy turns have no words).

Energy turns: 30 ms frames; a frame is speech when its level is 15 dB above the channel's
noise floor (its 10th percentile level) and above -50 dBFS; speech runs closer than
`min_silence_s` merge, and runs shorter than `min_turn_s` are dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa

from . import storage
from .errors import InputError
from .features.media import MediaError, audio_levels
from .schema import UTTERANCES_SCHEMA, validate_utterances

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
FRAME_S = 0.03  # energy frame, seconds
END_TOLERANCE_S = 0.25  # a turn may end this far past the audio's end (codec padding, rounding)


@dataclass(frozen=True)
class EnergyOptions:
    min_silence_s: float = 0.5  # pauses shorter than this stay inside a turn
    min_turn_s: float = 0.25  # shorter bursts (clicks, breaths) are not turns
    above_floor_db: float = 15.0
    min_level_dbfs: float = -50.0


@dataclass(frozen=True)
class Problem:
    call_id: str
    reason: str  # bad_sidecar, bad_segment, no_usable_segments, past_end, overlap, unreadable_audio,
    #              two_recordings, two_transcripts, no_recording, unknown_file
    detail: str

    def describe(self) -> str:
        return f"{self.call_id}: {self.reason}: {self.detail}"


@dataclass
class Turn:
    start_s: float
    end_s: float
    speaker: str | None
    text: str | None
    channel: int | None = None
    label: str | None = None
    words_from: str | None = None  # transcript | asr | None (energy: no words)
    asr_logprob: float | None = None  # the recogniser's mean log-probability over the turn
    asr_no_speech: float | None = None  # its highest no-speech probability


@dataclass
class CallImport:
    table: pa.Table
    problems: list[Problem]
    sources: dict[str, int] = field(default_factory=dict)  # how turns were found -> calls

    def describe(self) -> str:
        found = ", ".join(f"{n} by {how}" for how, n in sorted(self.sources.items()))
        lines = [f"{self.table.num_rows} turns in {sum(self.sources.values())} calls ({found})"]
        lines.append(f"problems: {len(self.problems)}" + "".join(f"\n  {p.describe()}" for p in self.problems))
        return "\n".join(lines)


def import_calls(source: str, split: str | None = None, energy: EnergyOptions = EnergyOptions()) -> CallImport:
    """Every call under `source` (a folder or an s3:// prefix) to utterance rows, in this process
    (`sdt-ray import calls` runs the same per call on Ray workers: pipelines/calls.py)."""
    listing = find_calls(source)
    calls = [(call_id, audio, sidecar) for call_id, (audio, sidecar) in listing.calls.items()]
    rows, problems, sources = import_many(calls, split, energy)
    return CallImport(turns_table(rows, source), list(listing.problems) + problems, sources)


@dataclass
class PreparedCall:
    """A call after its CPU work: turns from the transcript or energy, and the channel levels
    speech recognition plans its spans from (None when the audio could not be read)."""

    call_id: str
    audio_uri: str
    turns: list[Turn]
    how: str  # transcript | energy | unreadable audio | asr
    problems: list[Problem]
    levels: np.ndarray | None = None  # (C, F) dBFS per FRAME_S frame
    duration_s: float = 0.0


def import_many(calls: list[tuple[str, str, str | None]], split: str | None, energy: EnergyOptions,
                roles: tuple[str, ...] = ()) -> tuple[list[dict], list[Problem], dict[str, int]]:
    """(call id, audio URI, sidecar URI) each -> their rows, problems, and how many calls each way of finding turns took."""
    return call_rows([prepare_call(*call, energy) for call in calls], split, roles)


def call_rows(prepared: list[PreparedCall], split: str | None,
              roles: tuple[str, ...] = ()) -> tuple[list[dict], list[Problem], dict[str, int]]:
    """Prepared calls, in order -> their utterance rows, problems, and calls per way of finding turns."""
    rows, problems, sources = [], [], {}
    for call in prepared:
        rows += [_row(call.call_id, i, turn, call.audio_uri, split, roles) for i, turn in enumerate(call.turns)]
        problems += call.problems
        sources[call.how] = sources.get(call.how, 0) + 1
    return rows, problems, sources


def turns_table(rows: list[dict], source: str) -> pa.Table:
    return validate_utterances(pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA), source)


@dataclass
class Listing:
    calls: dict[str, tuple[str, str | None]]  # call id -> (audio URI, sidecar URI or None)
    problems: list[Problem]  # files that are not imported, each named
    files: list[dict] = field(default_factory=list)  # {"uri", "size", "mtime"} of every file the calls read (resume check)


SIDECARS = (".json", ".csv")


def find_calls(source: str) -> Listing:
    """Calls under `source`: call id = path below it without extension. A stem with two
    recordings, a sidecar without a recording and a file of an unknown kind are each a problem
    naming the file(s), never skipped silently."""
    facts = storage.walk_facts(source)
    files = [f["uri"] for f in facts]
    if not files and storage.exists(source):
        raise InputError(f"{source}: give the folder (or s3:// prefix) that holds the recordings")
    root = source.rstrip("/") + "/"
    by_stem: dict[str, dict[str, str]] = {}
    problems = []
    for uri in files:
        relative = PurePosixPath(uri[len(root):])
        if relative.suffix.lower() not in AUDIO_EXTENSIONS + SIDECARS:
            problems.append(Problem(str(relative.with_suffix("")), "unknown_file",
                                    f"{uri}: not a recording ({', '.join(AUDIO_EXTENSIONS)}) nor a transcript (.json, .csv); not imported"))
            continue
        by_stem.setdefault(str(relative.with_suffix("")), {})[relative.suffix.lower()] = uri
    calls = {}
    for stem, found in sorted(by_stem.items()):
        audio = [found[e] for e in AUDIO_EXTENSIONS if e in found]
        sidecars = [found[e] for e in SIDECARS if e in found]
        if len(audio) > 1:
            problems.append(Problem(stem, "two_recordings", f"{' and '.join(audio)} share a name; rename one (neither imported)"))
        elif not audio:
            problems.append(Problem(stem, "no_recording", f"{', '.join(sidecars)}: a transcript without a recording; not imported"))
        else:
            if len(sidecars) > 1:
                problems.append(Problem(stem, "two_transcripts", f"{' and '.join(sidecars)}: using {sidecars[0]}"))
            calls[stem] = (audio[0], sidecars[0] if sidecars else None)
    if not calls:
        raise InputError(f"{source}: no recordings ({', '.join(AUDIO_EXTENSIONS)})")
    used = {u for audio, sidecar in calls.values() for u in (audio, sidecar) if u}
    return Listing(calls, problems, [f for f in facts if f["uri"] in used])


def prepare_call(call_id: str, audio_uri: str, sidecar_uri: str | None, energy: EnergyOptions) -> PreparedCall:
    """One call's levels (streamed: flat memory) and turns from its transcript, or by energy."""
    try:
        levels, duration = audio_levels(audio_uri, FRAME_S)  # (C, F) dBFS
    except MediaError as exc:
        return PreparedCall(call_id, audio_uri, [], "unreadable audio", [Problem(call_id, "unreadable_audio", f"{exc.reason}: {exc.detail}")])
    turns, how, problems = _turns(call_id, audio_uri, sidecar_uri, energy, levels, duration)
    return PreparedCall(call_id, audio_uri, turns, how, problems, levels, duration)


def _turns(call_id: str, audio_uri: str, sidecar_uri: str | None, energy: EnergyOptions, levels: np.ndarray,
           duration: float) -> tuple[list[Turn], str, list[Problem]]:
    problems: list[Problem] = []
    if sidecar_uri:
        try:
            raw = read_sidecar(sidecar_uri)
        except ValueError as exc:
            problems.append(Problem(call_id, "bad_sidecar", f"{sidecar_uri}: {exc}; turns found by energy instead"))
        else:
            turns, found = parse_segments(call_id, raw, channels=levels.shape[0])
            kept, faults = check_turns(call_id, turns, duration)
            if kept or not raw:
                _assign_channels(kept, levels)
                for turn in kept:
                    turn.words_from = "transcript" if turn.text else None
                return kept, "transcript", problems + found + faults
            problems += found + faults + [Problem(call_id, "no_usable_segments",
                                                  f"{sidecar_uri}: none of its {len(raw)} segments is usable; turns found by energy instead")]
    return energy_turns(levels, energy), "energy", problems


def read_sidecar(uri: str) -> list[dict]:
    """Raw segments of a .json (whisper style) or .csv sidecar; ValueError when unparsable."""
    text = storage.read_text(uri)
    if uri.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        missing = {"start", "end", "text"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"CSV without columns {sorted(missing)}")
        return [dict(row) for row in reader]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    segments = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(segments, list):
        raise ValueError("no 'segments' list")
    return segments


def parse_segments(call_id: str, raw: list, channels: int | None = None) -> tuple[list[Turn], list[Problem]]:
    turns, problems = [], []
    for i, segment in enumerate(raw):
        try:
            turns.append(_turn(segment, channels))
        except (TypeError, ValueError, KeyError) as exc:
            problems.append(Problem(call_id, "bad_segment", f"segment {i}: {exc}"))
    return turns, problems


def _turn(segment: dict, channels: int | None = None) -> Turn:
    if not isinstance(segment, dict):
        raise TypeError(f"a segment must be an object, not {type(segment).__name__}")
    for key in ("start", "end"):
        if segment.get(key) in (None, ""):
            raise KeyError(f"no '{key}'")
    start, end = float(segment["start"]), float(segment["end"])
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise ValueError(f"times [{segment['start']}, {segment['end']}) are not a forward span")
    text = segment.get("text")
    if text is not None and not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    return Turn(start, end, _text(segment.get("speaker")), _text(text), _channel(segment.get("channel"), channels),
                _text(segment.get("label")))


def _channel(value, channels: int | None) -> int | None:
    """A segment's channel: an integer naming one of the recording's channels, or None."""
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"channel {value!r} is not a whole number")
    channel = int(float(value))
    if channel < 0 or channel >= (channels if channels is not None else 2**15):
        raise ValueError(f"channel {value} is not one of the recording's channels (0..{(channels or 2**15) - 1})")
    return channel


def _text(value) -> str | None:
    value = None if value is None else str(value).strip()
    return value or None


def check_turns(call_id: str, turns: list[Turn], duration_s: float) -> tuple[list[Turn], list[Problem]]:
    """Drop turns past the audio's end and turns overlapping an earlier turn of the same speaker."""
    kept, problems = [], []
    last_end: dict[str | None, float] = {}
    for turn in sorted(turns, key=lambda t: (t.start_s, t.end_s)):
        if turn.end_s > duration_s + END_TOLERANCE_S:
            problems.append(Problem(call_id, "past_end", f"turn [{turn.start_s:.2f}, {turn.end_s:.2f}) s of a {duration_s:.2f} s recording"))
        elif turn.speaker is not None and turn.start_s < last_end.get(turn.speaker, -1.0):
            problems.append(Problem(call_id, "overlap", f"turn [{turn.start_s:.2f}, {turn.end_s:.2f}) s of {turn.speaker} starts "
                                    f"before their previous turn ends ({last_end[turn.speaker]:.2f} s)"))
        else:
            kept.append(turn)
            last_end[turn.speaker] = turn.end_s
    return kept, problems


def _assign_channels(turns: list[Turn], levels: np.ndarray) -> None:
    """Stereo: a turn without a channel takes the loudest one over its span."""
    if levels.shape[0] < 2:
        return
    for turn in turns:
        if turn.channel is None:
            a, b = int(turn.start_s / FRAME_S), max(int(turn.end_s / FRAME_S), int(turn.start_s / FRAME_S) + 1)
            power = (10 ** (levels[:, a:b].astype(np.float64) / 10)).mean(axis=1)  # (C,)
            turn.channel = int(np.argmax(power))


def energy_turns(levels: np.ndarray, options: EnergyOptions = EnergyOptions()) -> list[Turn]:
    """Turns per channel from frame levels (C, F) in dBFS, merged in time order."""
    turns = []
    for channel, level in enumerate(levels):
        floor = np.percentile(level, 10)
        active = (level > floor + options.above_floor_db) & (level > options.min_level_dbfs)  # (F,)
        for start, end in _runs(active, round(options.min_silence_s / FRAME_S)):
            if (end - start) * FRAME_S >= options.min_turn_s:
                turns.append(Turn(start * FRAME_S, end * FRAME_S, f"ch{channel}", None, channel))
    return sorted(turns, key=lambda t: (t.start_s, t.channel))


def _runs(active: np.ndarray, bridge: int) -> list[tuple[int, int]]:
    """[start, end) frame runs of True, joining runs separated by fewer than `bridge` frames."""
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    runs: list[tuple[int, int]] = []
    for s, e in zip(starts, ends):
        if runs and s - runs[-1][1] < bridge:
            runs[-1] = (runs[-1][0], int(e))
        else:
            runs.append((int(s), int(e)))
    return runs


def heard_turns(call: PreparedCall, heard: list) -> PreparedCall:
    """The call with its turns from speech recognition (asr.HeardTurn, in time order) in place
    of any it had; a call where nothing was heard, or a mono call, is listed."""
    stereo = call.levels is not None and call.levels.shape[0] > 1  # mono turns keep channel null, as transcript turns do
    turns = [Turn(h.start_s, h.end_s, f"ch{h.channel}", h.text, h.channel if stereo else None, None, "asr",
                  round(h.logprob, 4), round(h.no_speech, 4)) for h in heard]
    problems = list(call.problems)
    if not turns:
        problems.append(Problem(call.call_id, "no_speech", f"{call.audio_uri}: the recogniser heard no words in "
                                f"{call.duration_s:.1f} s; the call has no turns"))
    elif not stereo:
        problems.append(Problem(call.call_id, "one_speaker_lane", f"{call.audio_uri} is mono: all its turns are one "
                                "speaker lane (ch0); no diarization model is available offline"))
    return PreparedCall(call.call_id, call.audio_uri, turns, "asr", problems, call.levels, call.duration_s)


def _row(call_id: str, index: int, turn: Turn, audio_uri: str, split: str | None, roles: tuple[str, ...] = ()) -> dict:
    speaker = roles[turn.channel] if turn.channel is not None and turn.channel < len(roles) else turn.speaker
    return {
        "dialogue_id": call_id, "utterance_index": index, "speaker": speaker or "unknown", "text": turn.text,
        "label": turn.label, "split": split, "audio_uri": audio_uri, "video_uri": None,
        "start_s": round(turn.start_s, 3), "end_s": round(turn.end_s, 3), "channel": turn.channel,
        "words_from": turn.words_from, "asr_logprob": turn.asr_logprob, "asr_no_speech": turn.asr_no_speech,
    }
