"""Rebuild the bundled media corpus (sdt_ray/demo/media_corpus/) from MELD's dev text.

    apt-get install espeak-ng ffmpeg
    python scripts/make_corpus.py ../shared/data/meld/dev_sent_emo.csv

For each utterance of a few MELD dev dialogues:
- speech: espeak-ng reads the real MELD text, one voice per speaker. The voice,
  rate and pitch never depend on the emotion label, or the audio would leak it.
- video: face.jpg (public domain) with a slow drift, tinted per speaker, the
  speech as its audio track: H.264 160x160 at 10 fps, AAC mono 16 kHz.
The manifest (manifest.csv) lists the clips; `importers.import_media_manifest`
turns it into an utterances table. Not used at run time: only the clips are.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "sdt_ray" / "demo" / "media_corpus"  # the corpus it writes
VOICES = [
    "en-us+m3", "en-us+f2", "en-gb+m1", "en-gb+f3", "en-us+m7", "en-us+f4",
    "en-gb-scotland+m2", "en-029+f1", "en-gb-x-rp+m4", "en-us+f5", "en-gb+m6", "en-029+m2",
]
HUES = [0, 40, -40, 80, -80, 120, -120, 160, 20, -20, 60, -60]  # degrees: the visual channel tells speakers apart, not emotions
DIALOGUES = 8
UTTERANCES = (4, 9)  # keep dialogues with this many utterances (inclusive)


def pick_dialogues(rows: list[dict]) -> list[list[dict]]:
    by_dialogue: dict[int, list[dict]] = {}
    for row in rows:
        by_dialogue.setdefault(int(row["Dialogue_ID"]), []).append(row)
    chosen = [d for _, d in sorted(by_dialogue.items()) if UTTERANCES[0] <= len(d) <= UTTERANCES[1]]
    return [sorted(d, key=lambda r: int(r["Utterance_ID"])) for d in chosen[:DIALOGUES]]


def speakable(text: str) -> str:
    """ASCII for espeak-ng (MELD has curly quotes and some mojibake); the manifest keeps the original."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return "".join(c if ord(c) < 128 else " " for c in text).strip() or "Hmm."


def synthesise(text: str, voice: str, wav: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(wav), speakable(text)], check=True)


def render(face: Path, wav: Path, hue: int, out: Path) -> None:
    drift = "crop=160:160:x='20+8*sin(2*PI*t/3)':y='20+6*cos(2*PI*t/4)'"  # slight head motion, pixels
    subprocess.run(
        [
            "ffmpeg", "-loglevel", "error", "-y", "-loop", "1", "-framerate", "10", "-i", str(face), "-i", str(wav),
            "-filter_complex", f"[0:v]scale=200:200,{drift},hue=h={hue},format=yuv420p[v]",
            "-map", "[v]", "-map", "1:a", "-c:v", "libx264", "-preset", "veryslow", "-crf", "30", "-threads", "1",
            "-c:a", "aac", "-b:a", "24k", "-ac", "1", "-ar", "16000", "-shortest", str(out),
        ],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("meld_dev_csv", type=Path)
    args = parser.parse_args()
    with open(args.meld_dev_csv, newline="", encoding="utf-8") as f:
        dialogues = pick_dialogues(list(csv.DictReader(f)))
    speakers = sorted({r["Speaker"] for d in dialogues for r in d})
    style = {s: (VOICES[i % len(VOICES)], HUES[i % len(HUES)]) for i, s in enumerate(speakers)}
    clips = HERE / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        for dialogue in dialogues:
            for row in dialogue:
                name = f"dia{int(row['Dialogue_ID']):04d}_utt{int(row['Utterance_ID']):02d}.mp4"
                voice, hue = style[row["Speaker"]]
                wav = Path(tmp) / "speech.wav"
                synthesise(row["Utterance"], voice, wav)
                render(HERE / "face.jpg", wav, hue, clips / name)
                manifest.append(
                    {
                        "dialogue_id": f"meld_dev_{int(row['Dialogue_ID'])}",
                        "utterance_index": int(row["Utterance_ID"]),
                        "speaker": row["Speaker"],
                        "text": row["Utterance"],
                        "label": row["Emotion"],
                        "split": "dev",
                        "video_uri": f"clips/{name}",
                        "audio_uri": f"clips/{name}",
                    }
                )
    with open(HERE / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(manifest[0]))
        writer.writeheader()
        writer.writerows(manifest)
    print(f"{len(manifest)} clips in {clips}, {len(speakers)} speakers")


if __name__ == "__main__":
    main()
