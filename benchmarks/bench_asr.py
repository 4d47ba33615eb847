"""Speech recognition on the generated calls, transcripts withheld: what was heard, and what it
does to the emotion figures.

The calls: the bundled MELD slice's two-speaker dev dialogues, read by two espeak-ng voices
(scripts/make_calls.py), each with its gold transcript and MELD's labels. Three imports of
the same recordings, each then `extract` (text + audio) and `predict` with the bundled
text+audio checkpoint (`make meld-text-audio`):
- gold: the transcripts given (gold turns, gold text);
- heard: the transcripts withheld, `import calls --asr whisper-base`;
- audio alone: the transcripts withheld, no recognition (energy turns, no text), as before.

Reported: the word error rate per call and overall (words of a call in time order, against its
gold transcript); the share of gold turns matched by a heard turn (at least 50% of the gold
turn's time); accuracy and weighted F1 against MELD's labels, each way over the gold turns it
matched (gold: all of them); recognition throughput as audio seconds per wall second per core;
and the call flow's wall time per audio hour (import with recognition, extract, predict,
report). No selection happens: one checkpoint, one setting, every call.

`long_call`: the recogniser's peak memory on a 10-minute and a 2-hour stereo call (8 kHz WAV:
a generated dialogue every 5 minutes, silence between), each in a fresh process: the spans
keep it flat.

    python -m benchmarks.bench_asr --calls 13 --long-minutes 10,120
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdt_ray.demo import CALL_GENERATOR


def bench_asr(calls: int = 13, workdir: str | None = None) -> dict[str, Any]:
    from sdt_ray.importers import DEMO_CORPUS
    from sdt_ray.session import ray_session

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(CALL_GENERATOR), "--meld", str(DEMO_CORPUS / "dev_sent_emo.csv"),
                        "--output", str(work / "generated"), "--calls", str(calls + 1)], check=True, capture_output=True)
        for name in ("archive", "gold"):
            (work / name).mkdir()
        for k in range(calls):  # the generator's last call has no transcript: it is not used
            recording, transcript = work / "generated" / f"call_{k:03d}.wav", work / "generated" / f"call_{k:03d}.json"
            for target in (work / "archive", work / "gold"):
                shutil.copy(recording, target)
            shutil.copy(transcript, work / "gold")
        audio_s = sum(_wav_seconds(p) for p in (work / "archive").iterdir())
        with ray_session(None, num_cpus=os.cpu_count()):
            import ray

            ray.data.DataContext.get_current().enable_progress_bars = False
            runs = {way: _flow(way, work) for way in ("gold", "heard", "audio_alone")}
        return _evaluate(runs, audio_s, os.cpu_count() or 1)


def bench_long_call(minutes: tuple[float, ...] = (10, 120), workdir: str | None = None) -> dict[str, Any]:
    from .bench_scoring import _in_child
    from sdt_ray.importers import DEMO_CORPUS

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(CALL_GENERATOR), "--meld", str(DEMO_CORPUS / "dev_sent_emo.csv"),
                        "--output", str(work), "--calls", "2"], check=True, capture_output=True)
        runs = []
        for length in minutes:
            path = work / f"long-{length:g}.wav"
            _write_long_call(work / "call_000.wav", path, length)
            runs.append({"minutes": length, **_in_child(_recognise_alone, str(path))})
    return {"runs": runs, "peak_rss_growth_mb": round(runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"], 1)}


def _write_long_call(dialogue: Path, path: Path, minutes: float, rate: int = 8000, every_s: float = 300.0) -> None:
    """Stereo 16-bit WAV at `rate`: the dialogue every `every_s`, silence between, written in
    blocks (a 2-hour call never sits in this process's memory either)."""
    import wave

    with wave.open(str(dialogue)) as source:
        audio = np.frombuffer(source.readframes(source.getnframes()), np.int16).reshape(-1, 2)
        source_rate = source.getframerate()
    at = np.arange(int(len(audio) * rate / source_rate)) / rate
    speech = np.stack([np.interp(at, np.arange(len(audio)) / source_rate, audio[:, c]) for c in (0, 1)], axis=1).astype(np.int16)
    block = np.zeros((int(every_s * rate), 2), np.int16)
    block[: len(speech)] = speech[: len(block)]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        for _ in range(int(np.ceil(minutes * 60 / every_s))):
            out.writeframes(block.tobytes())


def _recognise_alone(uri: str) -> dict[str, Any]:
    """One call through prepare + recognition in this (child) process: wall time and VmHWM."""
    from sdt_ray.asr import AsrOptions, Recogniser
    from .bench_scale import _vm_hwm_mb
    from sdt_ray.calls import FRAME_S, EnergyOptions, prepare_call

    recogniser = Recogniser(AsrOptions(), threads=os.cpu_count() or 1)
    started = time.perf_counter()
    call = prepare_call("long", uri, None, EnergyOptions())
    turns = recogniser.call(uri, call.levels, call.duration_s, FRAME_S)
    return {"audio_s": round(call.duration_s, 1), "turns": len(turns), "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(_vm_hwm_mb(), 1)}


def _flow(way: str, work: Path) -> dict[str, Any]:
    """import -> extract -> predict (-> report for the heard calls), each step timed."""
    from sdt_ray import storage
    from sdt_ray.asr import AsrOptions
    from sdt_ray.pipelines import ExtractOptions, extract, predict_job
    from sdt_ray.pipelines.calls import CallImportOptions, import_calls_job
    from sdt_ray.report import build_report
    from sdt_ray.scoring import PredictOptions

    from sdt_ray.demo import DEMO_CALLS_MODEL

    quiet = {"log": lambda m: None}
    out = work / f"out-{way}"  # never inside an archive: import calls refuses that
    seconds = {}
    started = time.perf_counter()
    source = work / ("gold" if way == "gold" else "archive")
    imported = import_calls_job(str(source), str(out / "utterances"),
                                CallImportOptions(asr=AsrOptions() if way == "heard" else None), **quiet)
    seconds["import"] = time.perf_counter() - started
    started = time.perf_counter()
    extract(str(out / "utterances"), str(out / "features"), ExtractOptions(modalities=("text", "audio")), **quiet)
    seconds["extract"] = time.perf_counter() - started
    started = time.perf_counter()
    keep = ("start_s", "end_s", "text", "words_from", "asr_logprob") if way != "audio_alone" else ("start_s", "end_s")
    predict_job(str(DEMO_CALLS_MODEL), str(out / "features"), str(out / "predictions"), PredictOptions(keep_columns=keep), **quiet)
    seconds["predict"] = time.perf_counter() - started
    if way == "heard":
        started = time.perf_counter()
        build_report(str(out / "predictions"), str(out / "report"))
        seconds["report"] = time.perf_counter() - started
    turns = storage.read_table(str(out / "utterances")).to_pylist()
    predicted = {(r["dialogue_id"], r["utterance_index"]): r["label"]
                 for r in storage.read_table(str(out / "predictions"), columns=["dialogue_id", "utterance_index", "label"]).to_pylist()}
    return {"turns": turns, "predicted": predicted, "seconds": seconds, "problems": [p.describe() for p in imported.problems]}


def _evaluate(runs: dict[str, dict], audio_s: float, cpus: int) -> dict[str, Any]:
    from sdt_ray.demo import DEMO_CALLS_MODEL
    from sdt_ray.heard import edit_distance, match_turns, words

    labels = json.loads((DEMO_CALLS_MODEL / "config.json").read_text())["labels"]
    per_call, edits, reference_words, gold_turns, matched = [], 0, 0, 0, 0
    pairs: dict[str, list] = {"gold_text_all_turns": [], "gold_text": [], "heard_text": [], "audio_alone": []}
    for call in sorted({t["dialogue_id"] for t in runs["gold"]["turns"]}):
        gold, heard, energy = (_call_turns(runs[way]["turns"], call) for way in ("gold", "heard", "audio_alone"))
        reference = words(" ".join(t["text"] or "" for t in gold))
        call_edits = edit_distance(reference, words(" ".join(t["text"] or "" for t in heard)))
        by_heard, by_energy = match_turns(_spans(gold), _spans(heard)), match_turns(_spans(gold), _spans(energy))
        per_call.append({"call": call, "gold_turns": len(gold), "heard_turns": len(heard),
                         "wer": round(call_edits / max(len(reference), 1), 3), "matched": len(by_heard)})
        edits, reference_words, gold_turns, matched = edits + call_edits, reference_words + len(reference), gold_turns + len(gold), matched + len(by_heard)
        for g, turn in enumerate(gold):
            if not turn["label"]:
                continue
            pairs["gold_text_all_turns"].append((turn["label"], runs["gold"]["predicted"].get(_key(turn))))
            if g in by_heard:  # the common set: gold turns the recogniser matched
                pairs["gold_text"].append((turn["label"], runs["gold"]["predicted"].get(_key(turn))))
                pairs["heard_text"].append((turn["label"], runs["heard"]["predicted"].get(_key(heard[by_heard[g]]))))
                found = by_energy.get(g)
                pairs["audio_alone"].append((turn["label"], runs["audio_alone"]["predicted"].get(_key(energy[found])) if found is not None else None))
    heard_s = runs["heard"]["seconds"]
    return {
        "calls": len(per_call), "audio_s": round(audio_s, 1), "cpus": cpus,
        "wer": round(edits / max(reference_words, 1), 3), "per_call": per_call,
        "gold_turns": gold_turns, "matched_share": round(matched / max(gold_turns, 1), 3),
        "emotion": {way: _scores(p, labels) for way, p in pairs.items()},
        "recognition_audio_s_per_wall_s_per_core": round(audio_s / heard_s["import"] / cpus, 3),
        "flow_wall_s_per_audio_hour": {step: round(s * 3600 / audio_s, 1) for step, s in heard_s.items()},
        "seconds": {way: {k: round(v, 1) for k, v in run["seconds"].items()} for way, run in runs.items()},
        "problems": {way: run["problems"] for way, run in runs.items()},
    }


def _spans(turns: list[dict]):
    from sdt_ray.heard import Span

    return [Span(t["start_s"], t["end_s"]) for t in turns]


def _key(turn: dict) -> tuple[str, int]:
    return turn["dialogue_id"], turn["utterance_index"]


def _wav_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as source:
        return source.getnframes() / source.getframerate()


def _call_turns(turns: list[dict], call: str) -> list[dict]:
    return sorted((t for t in turns if t["dialogue_id"] == call), key=lambda t: t["start_s"])


def _scores(pairs: list[tuple[str, str | None]], labels: list[str]) -> dict[str, float]:
    """accuracy and weighted F1 of (gold, predicted or None) pairs; None counts as wrong."""
    from sdt_ray.metrics import classification_report

    names = labels + ["(none)"]
    y_true = np.array([names.index(g) for g, _ in pairs])
    y_pred = np.array([names.index(p) if p in labels else len(labels) for _, p in pairs])
    report = classification_report(y_true, y_pred, names)
    return {"turns": len(pairs), "accuracy": round(report["accuracy"], 3), "weighted_f1": round(report["weighted_f1"], 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=13, help="generated calls: the slice has 14 two-speaker dev dialogues, the generator leaves the last untranscribed")
    parser.add_argument("--long-minutes", default="10,120", help="comma-separated long-call lengths for the memory runs ('' skips)")
    args = parser.parse_args()
    results = bench_asr(args.calls)
    if args.long_minutes:
        results["long_call"] = bench_long_call(tuple(float(m) for m in args.long_minutes.split(",")))
    print(json.dumps(results, indent=2))
