"""Generate stereo "call recordings" from MELD dialogues, for tests, the demo and the bench.

    apt-get install espeak-ng
    python scripts/make_calls.py --meld sdt_ray/demo/meld_slice/dev_sent_emo.csv --output calls/

Each MELD dialogue with exactly two speakers becomes one call:
- the first speaker is on the left channel, the other on the right, each read by one
  espeak-ng voice. The voice, rate and pitch depend on the channel (the speaker) only,
  never on the emotion label, so the audio cannot leak the label;
- turns follow each other with a seeded random gap of 0.2-0.8 s; in the first call one
  turn starts 0.4 s before the previous one ends (an overlap across channels, as in real calls);
- `call_NNN.wav` (16-bit stereo, 22,050 Hz, espeak-ng's rate) and `call_NNN.json`, a
  whisper/WhisperX-style transcript: `segments` with start, end, text, speaker, plus the
  MELD label as `label` (an extra key that `import calls` reads when present, for evaluation).
The last call gets no transcript (`import calls` finds its turns per channel by energy).

`--long-call N` adds `long_call.wav/.json`: N turns cycling through the dialogues, for the
bench's memory check. `--bad-sidecars` adds three calls whose transcripts each hold one
fault: a segment without `end`, two overlapping turns of one speaker, a turn past the end of
the audio. Not used at run time.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

VOICES = ("en-us+m3", "en-us+f2")  # left channel (first speaker), right channel
RATE = 22_050  # espeak-ng's output rate, samples/s
GAP_S = (0.2, 0.8)
OVERLAP_S = 0.4


def two_speaker_dialogues(csv_path: Path) -> list[list[dict]]:
    by_dialogue: dict[int, list[dict]] = {}
    with open(csv_path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_dialogue.setdefault(int(row["Dialogue_ID"]), []).append(row)
    dialogues = [sorted(d, key=lambda r: int(r["Utterance_ID"])) for _, d in sorted(by_dialogue.items())]
    return [d for d in dialogues if len({r["Speaker"] for r in d}) == 2 and len(d) >= 3]


def speakable(text: str) -> str:
    """ASCII for espeak-ng (MELD has curly quotes and some mojibake); transcripts keep the original."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return "".join(c if ord(c) < 128 else " " for c in text).strip() or "Hmm."


class Voices:
    """espeak-ng speech as float32 mono at RATE, cached by (voice, text)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def say(self, text: str, voice: str) -> np.ndarray:
        key = (voice, speakable(text))
        if key not in self.cache:
            wav = self.folder / f"{len(self.cache)}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(wav), key[1]], check=True)
            with wave.open(str(wav)) as reader:
                assert reader.getframerate() == RATE and reader.getnchannels() == 1
                pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
            self.cache[key] = pcm.astype(np.float32) / 32768.0
        return self.cache[key]


def build_call(turns: list[dict], voices: Voices, rng: random.Random, overlap_at: int | None) -> tuple[np.ndarray, list[dict]]:
    """(samples, 2) stereo float32 and one segment per turn."""
    channel_of = {turns[0]["Speaker"]: 0}
    cursor, placed = 0.3, []
    for i, turn in enumerate(turns):
        channel = channel_of.setdefault(turn["Speaker"], 1)
        speech = voices.say(turn["Utterance"], VOICES[channel])
        start = cursor
        if i == overlap_at and placed and placed[-1][1] != channel:
            start = max(placed[-1][0] + 0.1, cursor - rng.uniform(*GAP_S) - OVERLAP_S)
        placed.append((start, channel, speech, turn))
        cursor = max(cursor, start + len(speech) / RATE) + rng.uniform(*GAP_S)
    audio = np.zeros((int((cursor + 0.3) * RATE), 2), dtype=np.float32)
    segments = []
    for start, channel, speech, turn in placed:
        at = int(start * RATE)
        audio[at : at + len(speech), channel] += speech
        segments.append({
            "id": len(segments), "start": round(at / RATE, 3), "end": round((at + len(speech)) / RATE, 3),
            "text": turn["Utterance"], "speaker": turn["Speaker"], "label": turn["Emotion"],
        })
    return audio, segments


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(audio.shape[1])
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(pcm.tobytes())


def write_transcript(path: Path, segments: list[dict]) -> None:
    path.write_text(json.dumps({"language": "en", "text": " ".join(s["text"] for s in segments), "segments": segments},
                               ensure_ascii=False, indent=1))


def spoil(segments: list[dict], fault: str, duration_s: float) -> list[dict]:
    """One fault in an otherwise good transcript (for `--bad-sidecars`)."""
    segments = [dict(s) for s in segments]
    if fault == "missing_end":
        del segments[1]["end"]
    elif fault == "overlap":  # the same speaker talks twice at once
        same = next(i for i in range(2, len(segments)) if segments[i]["speaker"] == segments[0]["speaker"])
        segments[same]["start"] = segments[0]["start"] + 0.05
        segments[same]["end"] = max(segments[same]["end"], segments[0]["end"])
    elif fault == "past_end":
        segments[-1]["start"], segments[-1]["end"] = duration_s + 1.0, duration_s + 2.5
    return segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meld", type=Path, required=True, help="A MELD *_sent_emo.csv (dev for the demo and tests).")
    parser.add_argument("--output", type=Path, required=True, help="Folder for call_NNN.wav/.json.")
    parser.add_argument("--calls", type=int, default=4, help="Calls, one MELD dialogue each (the last without transcript).")
    parser.add_argument("--long-call", type=int, default=0, help="Also write long_call.wav/.json with this many turns.")
    parser.add_argument("--bad-sidecars", action="store_true", help="Also write three calls with one transcript fault each.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is not installed (apt-get install espeak-ng; `make calls` and `make bench` install it)")

    dialogues = two_speaker_dialogues(args.meld)
    if len(dialogues) < args.calls + (3 if args.bad_sidecars else 0):
        parser.error(f"{args.meld} has {len(dialogues)} two-speaker dialogues")
    rng = random.Random(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        voices = Voices(Path(tmp))
        for n in range(args.calls):
            audio, segments = build_call(dialogues[n], voices, rng, overlap_at=2 if n == 0 else None)
            write_wav(args.output / f"call_{n:03d}.wav", audio)
            if n < args.calls - 1:
                write_transcript(args.output / f"call_{n:03d}.json", segments)
        if args.bad_sidecars:
            for k, fault in enumerate(("missing_end", "overlap", "past_end")):
                audio, segments = build_call(dialogues[args.calls + k], voices, rng, overlap_at=None)
                write_wav(args.output / f"bad_{fault}.wav", audio)
                write_transcript(args.output / f"bad_{fault}.json", spoil(segments, fault, len(audio) / RATE))
        if args.long_call:
            turns = [dict(t, Speaker=("A" if t["Speaker"] == d[0]["Speaker"] else "B"))
                     for d in dialogues for t in d]
            turns = [turns[i % len(turns)] for i in range(args.long_call)]
            audio, segments = build_call(turns, voices, rng, overlap_at=None)
            write_wav(args.output / "long_call.wav", audio)
            write_transcript(args.output / "long_call.json", segments)
    print(f"wrote {args.calls} calls{' + 3 with bad sidecars' if args.bad_sidecars else ''}"
          f"{f' + a {args.long_call}-turn call' if args.long_call else ''} to {args.output}")


if __name__ == "__main__":
    main()
