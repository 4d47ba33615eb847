"""Live scoring under load on loopback (`sdt-ray serve`), run by `make bench` under `live`.

    python -m benchmarks.bench_live [--calls 50] [--interval 2] [--duration 120] [--equality-corpus ../shared/data/meld]

- `equality`: every turn of the corpus's test dialogues sent in order through the API, against
  `predict --causal --extract` on the same checkpoint: the largest probability difference.
- `steady`: CALLS simulated calls, each sending a turn every INTERVAL s for DURATION s (MELD
  lines from the bundled slice), on local Ray with 2 CPUs and MiniLM: p50 / p99 / max latency
  per turn, turns per second, and whether every turn got exactly one score (checked with GET).
- `failover`: the same, with the replica that answers /healthz killed by PID (SIGKILL) halfway;
  clients retry a failed turn with its turn id, so a turn is scored once; the latency spike is
  the largest latency within 10 s of the kill.

Latency runs from when a turn was due, so a client held up by a slow server counts it too. A
turn not scored within MAX_WAIT_S counts as unscored and is left out of the percentiles.

Bounded and self-stopping: each phase ends after DURATION s plus at most MAX_WAIT s for its last turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOKEN = "bench"
KEYS = [("dialogue_id", "ascending"), ("utterance_index", "ascending")]
MAX_WAIT_S = 30.0  # a turn not scored within this (retries included) counts as unscored


@dataclass
class LoadResult:
    sent: list[tuple[float, float]] = field(default_factory=list)  # (send time since start s, latency s) per scored turn
    unscored: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self, seconds: float, kill_at: float | None, exactly_once: bool) -> dict:
        latencies = np.array([lat for _, lat in self.sent]) * 1000  # ms
        result = {
            "turns": len(self.sent), "unscored": self.unscored, "retries": self.retries, "errors": self.errors,
            "exactly_one_score_per_turn": exactly_once and self.unscored == 0,
            "turns_per_s": round(len(self.sent) / seconds, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
            "max_ms": round(float(latencies.max()), 1) if len(latencies) else None,
            "timeline": [[round(t, 2), round(lat * 1000, 1)] for t, lat in self.sent],
        }
        if kill_at is not None:
            near = [lat * 1000 for t, lat in self.sent if kill_at - 1 <= t <= kill_at + 10]
            result["kill_at_s"] = round(kill_at, 1)
            result["spike_max_ms"] = round(max(near), 1) if near else None
        return result


def meld_lines(limit: int = 2000) -> list[tuple[str, str]]:
    """(speaker, text) of the bundled MELD slice's train dialogues, in order."""
    import pyarrow.compute as pc

    from sdt_ray.importers import DEMO_CORPUS, import_corpus

    table = import_corpus("meld", DEMO_CORPUS)
    table = table.filter(pc.equal(table.column("split"), "train"))
    return list(zip(table.column("speaker").to_pylist(), table.column("text").to_pylist()))[:limit]


async def _one_call(client, call_id: str, lines, start: float, interval_s: float, duration_s: float,
                    result: LoadResult, offset: float) -> list[str]:
    """Send a turn every interval_s until duration_s; retry a failed one (same turn id) until MAX_WAIT_S."""
    import httpx

    sent_ids = []
    k = 0
    while True:
        due = start + offset + k * interval_s
        if due - start >= duration_s:
            return sent_ids
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        speaker, text = lines[k % len(lines)]
        turn_id = f"{call_id}-{k}"
        sent_at = max(due, start)  # latency from when the turn was due, so that a late send counts too
        while True:
            try:
                reply = await client.post(f"/v1/calls/{call_id}/turns", json={"speaker": speaker, "text": text, "turn_id": turn_id})
                if reply.status_code == 200:
                    result.sent.append((sent_at - start, time.perf_counter() - sent_at))
                    sent_ids.append(turn_id)
                    break
                key = str(reply.status_code)
            except httpx.HTTPError as problem:
                key = type(problem).__name__
            result.errors[key] = result.errors.get(key, 0) + 1
            if time.perf_counter() - sent_at > MAX_WAIT_S:
                result.unscored += 1
                break
            result.retries += 1
            await asyncio.sleep(0.2)
        k += 1


async def _load(url: str, calls: int, interval_s: float, duration_s: float, kill_at_s: float | None, tag: str) -> dict:
    import httpx

    lines = meld_lines()
    result = LoadResult()
    limits = httpx.Limits(max_connections=calls + 8, max_keepalive_connections=calls + 8)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=MAX_WAIT_S, limits=limits) as client:
        start = time.perf_counter()
        rng = random.Random(0)
        tasks = [asyncio.create_task(_one_call(client, f"{tag}-{c}", lines[(37 * c) % len(lines):] + lines, start, interval_s,
                                               duration_s, result, rng.uniform(0, interval_s))) for c in range(calls)]
        killed_at = None
        if kill_at_s is not None:
            await asyncio.sleep(kill_at_s)
            pid = (await client.get("/healthz")).json()["pid"]
            killed_at = time.perf_counter() - start
            os.kill(pid, signal.SIGKILL)
        sent = await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
        exactly_once = True
        for c, ids in enumerate(sent):  # the server's record of each call: every sent turn once, in order
            reply = await client.get(f"/v1/calls/{tag}-{c}")
            turns = reply.json()["turns"] if reply.status_code == 200 else []
            exactly_once &= [t["turn_id"] for t in turns] == ids and [t["index"] for t in turns] == list(range(len(ids)))
            await client.delete(f"/v1/calls/{tag}-{c}")
    return result.summary(seconds, killed_at, exactly_once)


async def _equality(url: str, utterances, concurrency: int = 16) -> dict[str, list]:
    """call id -> per turn in order: probabilities from the API."""
    import httpx

    from sdt_ray.importers import MELD_LABELS

    by_dialogue: dict[str, list] = {}
    for row in utterances.to_pylist():
        by_dialogue.setdefault(row["dialogue_id"], []).append(row)
    gate = asyncio.Semaphore(concurrency)
    out: dict[str, list] = {}

    async def one(dialogue_id, rows, client):
        async with gate:
            out[dialogue_id] = []
            for row in rows:
                reply = await client.post(f"/v1/calls/eq-{dialogue_id}/turns", json={"speaker": row["speaker"], "text": row["text"]})
                reply.raise_for_status()
                out[dialogue_id].append([reply.json()["probabilities"][c] for c in MELD_LABELS])
            await client.delete(f"/v1/calls/eq-{dialogue_id}")

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        await asyncio.gather(*(one(d, rows, client) for d, rows in by_dialogue.items()))
    return out


def causal_batch(checkpoint: str, corpus: str | None, workdir: Path, max_context: int):
    """(test utterances, `predict --causal --extract` rows, seconds) for `corpus`'s test dialogues (a
    MELD folder; default the bundled slice). Run before serving: the replicas hold the CPUs after."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from sdt_ray import storage
    from sdt_ray.importers import DEMO_CORPUS, import_corpus
    from sdt_ray.pipelines import ExtractOptions, predict_job
    from sdt_ray.scoring import PredictOptions

    source = corpus or DEMO_CORPUS
    table = import_corpus("meld", source)
    table = table.filter(pc.equal(table.column("split"), "test"))
    table = table.filter(pc.invert(pc.equal(pc.utf8_trim_whitespace(table.column("text")), "")))  # the API refuses empty turns
    table = table.sort_by(KEYS)
    pq.write_table(table, workdir / "test_utterances.parquet")
    started = time.perf_counter()
    predict_job(checkpoint, str(workdir / "test_utterances.parquet"), str(workdir / "causal"),
                PredictOptions(causal=True, max_context=max_context, overwrite=True), log=lambda m: None, extraction=ExtractOptions())
    return table, storage.read_table(str(workdir / "causal")).sort_by(KEYS), time.perf_counter() - started


def live_equality(url: str, table, batch, batch_s: float, corpus: str | None) -> dict:
    """Every test turn through the API, in order per dialogue, against the batch rows."""
    from sdt_ray.importers import MELD_LABELS

    started = time.perf_counter()
    live = asyncio.run(_equality(url, table))
    live_s = time.perf_counter() - started
    got = np.concatenate([np.array(live[d]) for d in sorted(live)])  # (n, C), dialogue then turn order
    expected = np.stack([batch.column(f"prob_{c}").to_numpy() for c in MELD_LABELS], axis=1)
    return {"corpus": corpus or "bundled MELD slice", "dialogues": len(live), "turns": int(got.shape[0]),
            "max_abs_diff": float(np.abs(got - expected).max()), "labels_equal": bool((got.argmax(1) == expected.argmax(1)).all()),
            "batch_s": round(batch_s, 1), "live_s": round(live_s, 1)}


def bench_live(calls: int = 50, interval_s: float = 2.0, duration_s: float = 120.0, replicas: int = 2,
               workdir: str = "bench", equality_corpus: str | None = None, log=print) -> dict:
    from sdt_ray.demo import DEMO_MODEL
    from sdt_ray.live import LiveLimits
    from sdt_ray.serve import ServeSettings, start_serving, stop_serving
    from sdt_ray.session import ray_session

    checkpoint = str(DEMO_MODEL)  # MELD text over MiniLM features
    work = Path(workdir) / "live"
    work.mkdir(parents=True, exist_ok=True)
    settings = ServeSettings(checkpoint, port=_free_port(), token=TOKEN, replicas=replicas, cpus_per_replica=1.0, limits=LiveLimits())
    results = {"calls": calls, "interval_s": interval_s, "duration_s": duration_s, "replicas": replicas, "cpus": 2,
               "text_model": "minilm", "max_context": settings.limits.max_context}
    with ray_session(num_cpus=2):
        table, batch, batch_s = causal_batch(checkpoint, equality_corpus, work, settings.limits.max_context)
        url = start_serving(settings, log=log)
        try:
            results["equality"] = live_equality(url, table, batch, batch_s, equality_corpus)
            log(f"live equality: {json.dumps(results['equality'])}")
            results["steady"] = asyncio.run(_load(url, calls, interval_s, duration_s, None, "steady"))
            log(f"steady: p50 {results['steady']['p50_ms']} ms, p99 {results['steady']['p99_ms']} ms")
            results["failover"] = asyncio.run(_load(url, calls, interval_s, duration_s, duration_s / 2, "failover"))
            log(f"failover: p99 {results['failover']['p99_ms']} ms, spike {results['failover']['spike_max_ms']} ms")
        finally:
            stop_serving(settings)
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50, help="concurrent simulated calls")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between a call's turns")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds each phase sends turns")
    parser.add_argument("--replicas", type=int, default=2, help="model replicas (1 CPU each)")
    parser.add_argument("--equality-corpus", default=None, help="MELD folder whose test dialogues the equality check sends (default: the bundled slice)")
    parser.add_argument("--output", default="bench", help="folder for live.json")
    args = parser.parse_args(argv)
    results = bench_live(args.calls, args.interval, args.duration, args.replicas, args.output, args.equality_corpus)
    path = Path(args.output) / "live.json"
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "timeline"} if isinstance(v, dict) else v) for k, v in results.items()}, indent=1))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
