"""Speak every utterance of a MELD folder with espeak-ng, for the missing-modality experiment.

    python scripts/speak_meld.py --meld ../shared/data/meld --output meld-speech/

Writes one WAV per utterance and `OUTPUT/utterances.parquet`: the table `sdt-ray import meld`
makes (same ids, cleaned text, labels, splits) with `audio_uri` pointing at the WAVs.
The voice is picked by the speaker's name only (a stable hash over a fixed list), and rate
and pitch are fixed, so the audio carries who speaks and what is said, never the emotion: a
model cannot learn the label from it, which is what the experiment needs (it tests masking,
not audio). Existing WAVs are kept, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from make_calls import speakable
from sdt_ray import storage
from sdt_ray.importers import import_corpus

VOICES = ("en-us+m3", "en-us+f2", "en-gb+m1", "en-gb+f3", "en-us+m7", "en-us+f4", "en-gb-scotland+m2", "en-029+f1")


def voice_for(speaker: str) -> str:
    return VOICES[hashlib.sha256(speaker.encode()).digest()[0] % len(VOICES)]


def speak(dialogue_id: str, index: int, speaker: str, text: str, output: Path) -> str:
    wav = output / "wav" / f"{dialogue_id}_{index}.wav"
    if not wav.exists():
        subprocess.run(["espeak-ng", "-v", voice_for(speaker or ""), "-s", "165", "-w", str(wav), speakable(text or "")],
                       check=True)
    return str(wav.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meld", type=Path, required=True, help="Folder with {train,dev,test}_sent_emo.csv.")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2, help="espeak-ng processes at once")
    args = parser.parse_args()
    table = import_corpus("meld", args.meld)
    (args.output / "wav").mkdir(parents=True, exist_ok=True)
    columns = [table.column(c).to_pylist() for c in ("dialogue_id", "utterance_index", "speaker", "text")]
    with ThreadPoolExecutor(args.jobs) as pool:
        uris = list(pool.map(lambda row: speak(*row, args.output), zip(*columns)))
    table = table.set_column(table.column_names.index("audio_uri"), "audio_uri", pa.array(uris, pa.string()))
    storage.write_table(table, str(args.output / "utterances.parquet"))
    print(f"wrote {table.num_rows} utterances to {args.output / 'utterances.parquet'}")


if __name__ == "__main__":
    main()
