"""`import calls`: recordings (and their transcripts) -> utterances table, on Ray Data.

    driver: list the recordings (names, sizes, times; nothing is opened)
    call items, a part's worth each -> [import_part: per call, levels, transcript, checks]  CPU tasks
                                    -> part-NNNNN.parquet + done marker (turns, sources, problems)
    with --asr:                     -> [prepare_part: the same CPU work, levels kept]      CPU tasks
                                    -> [RecognitionStage: Whisper on the calls without a
                                        usable transcript, span by span; writes the part]   model actors

Decoding happens on the workers, one call after another within a part, parts in parallel.
The recognition actors decode the spans they transcribe themselves: handing decoded audio
from the CPU stage would put a whole call in the object store (460 MB per channel-hour).
Problems travel as data in each part's done marker and are summarised at the end; the output
mechanism (output.py) makes the job resumable and keeps it apart from the archive.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from .. import output, storage
from ..asr import AsrOptions, resolve_asr_model
from ..calls import FRAME_S, EnergyOptions, PreparedCall, Problem, call_rows, find_calls, heard_turns, import_many
from ..calls import prepare_call, turns_table
from ..errors import ConfigError
from ..failpoints import crash_once
from ..pools import StageDemand
from ..session import ray_session, require_shared_storage
from ..tasks import combined_sha256
from .wiring import READER_CPUS, check_all_done, fewer_actors, pool_sizes

PLAN = "_import.json"


@dataclass(frozen=True)
class CallImportOptions:
    split: str | None = None  # recorded for every turn
    energy: EnergyOptions = EnergyOptions()
    calls_per_part: int = 16  # calls per task and output file: the unit of parallel work and of resume
    cpus_per_task: float = 1.0  # decoding is single-threaded
    overwrite: bool = False
    asr: AsrOptions | None = None  # speech recognition for calls without a usable transcript
    roles: tuple[str, ...] = ()  # channel n's speaker is roles[n] (e.g. agent, customer)
    cpus_per_actor: float = 1.0  # per recognition actor (its CTranslate2 threads)
    gpus_per_actor: float = 0.0  # per recognition actor: float16 on CUDA
    actors: int | None = None  # recognition actors; default: sized from the cluster

    def job_options(self) -> dict:
        """What decides the output's content: a resumed run must agree on these."""
        return {"split": self.split, "energy": vars(self.energy), "calls_per_part": self.calls_per_part,
                "asr": vars(self.asr) if self.asr else None, "roles": list(self.roles)}


@dataclass
class CallImportSummary:
    output: str
    calls: int
    turns: int
    sources: dict[str, int]  # how turns were found -> calls
    problems: list[Problem]
    seconds: float
    resumed_parts: int = 0
    nodes: list[str] = field(default_factory=list)  # node ids that imported parts in this run

    def describe(self) -> str:
        found = ", ".join(f"{n} by {how}" for how, n in sorted(self.sources.items()))
        lines = [f"wrote {self.output}: {self.turns} turns in {self.calls} calls ({found})"
                 + (f" ({self.resumed_parts} parts from an earlier run)" if self.resumed_parts else ""),
                 f"throughput: {self.calls / max(self.seconds, 1e-9):.1f} calls/s over {self.seconds:.1f} s"]
        lines.append(f"problems: {len(self.problems)}" + "".join(f"\n  {p.describe()}" for p in self.problems))
        return "\n".join(lines)


def import_calls_job(source: str, output_uri: str, options: CallImportOptions = CallImportOptions(),
                     address: str | None = None, log: Callable[[str], None] = print) -> CallImportSummary:
    started = time.time()
    if options.calls_per_part < 1 or options.cpus_per_task <= 0:
        raise ConfigError("--calls-per-part must be at least 1 and --cpus-per-task positive")
    output.check_separate(output_uri, {"the archive": source})
    require_shared_storage(address, {"SOURCE": source, "--output": output_uri})
    if options.asr:
        resolve_asr_model(options.asr.model)  # joins and checks a pieced model here, before any work
    listing = find_calls(source)
    ids = list(listing.calls)
    parts = [ids[i : i + options.calls_per_part] for i in range(0, len(ids), options.calls_per_part)]
    plan = output.Plan("import", listing.files, options.job_options(), [len(p) for p in parts])
    plan = output.open_output(output_uri, plan, PLAN, options.overwrite, log)
    with ray_session(address):
        finished = output.finished_parts(output_uri, plan)
        todo = [k for k in range(len(parts)) if k not in finished]
        log(f"importing {sum(len(parts[k]) for k in todo)} of {len(ids)} calls in {len(todo)} parts")
        nodes = _run(parts, todo, listing.calls, output_uri, options) if todo else []
    done = check_all_done(output_uri, plan)
    output.complete(output_uri, plan, PLAN, done)
    summaries = [done[k]["summary"] for k in range(plan.parts)]
    problems = list(listing.problems) + [Problem(**p) for s in summaries for p in s["problems"]]
    return CallImportSummary(output_uri, len(ids), sum(s["turns"] for s in summaries), output.summed(done.values(), "sources"),
                             problems, time.time() - started, len(finished), nodes)


def _run(parts: list[list[str]], todo: list[int], calls: dict, output_uri: str, options: CallImportOptions) -> list[str]:
    items = [{"part": k, "calls": json.dumps([[c, *calls[c]] for c in parts[k]])} for k in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one block per part: every CPU gets one
    if not options.asr:
        ds = ds.map_batches(import_part, fn_kwargs={"output_uri": output_uri, "options": options}, batch_size=1,
                            batch_format="pyarrow", num_cpus=options.cpus_per_task)
        return sorted(set(row["node"] for row in ds.take_all()))
    size = fewer_actors(pool_sizes([StageDemand("asr", options.cpus_per_actor, options.gpus_per_actor)], options.actors)["asr"],
                        len(todo))
    ds = ds.map_batches(prepare_part, fn_kwargs={"options": options}, batch_size=1, batch_format="pyarrow",
                        num_cpus=READER_CPUS)  # decoding for levels is light beside recognition: it must not take an actor's core
    ds = ds.map_batches(RecognitionStage, fn_constructor_kwargs={"output_uri": output_uri, "options": options,
                                                                 "threads": max(1, int(size.num_cpus))},
                        batch_size=1, batch_format="pyarrow", compute=ActorPoolStrategy(size=size.actors),
                        num_cpus=size.num_cpus, num_gpus=size.num_gpus)
    return sorted(set(row["node"] for row in ds.take_all()))


def _files_sha256(calls: list[list]) -> str:
    """The part's input hash: each call's recording and transcript bytes, in order (read again
    after decoding, so mostly from the page cache)."""
    hashes = [hashlib.sha256(storage.read_bytes(uri)).hexdigest() for _, *uris in calls for uri in uris if uri]
    return combined_sha256(hashes)


def import_part(item: pa.Table, output_uri: str, options: CallImportOptions) -> pa.Table:
    """A part's calls in (one item); its turns written as part-NNNNN.parquet, then its done
    marker (calls, turns, how they were found, problems). Returns the node that did it. No
    model to load, so a plain Ray Data task, not an actor."""
    part = item.column("part")[0].as_py()
    calls = json.loads(item.column("calls")[0].as_py())
    _write_part(output_uri, part, import_many(calls, options.split, options.energy, options.roles), calls)
    return pa.table({"node": [ray.get_runtime_context().get_node_id()]})


def _write_part(output_uri: str, part: int, imported: tuple[list[dict], list[Problem], dict[str, int]], calls: list[list]) -> None:
    rows, problems, sources = imported
    output.write_part(turns_table(rows, output_uri), output_uri, part)
    summary = {"turns": len(rows), "sources": sources, "problems": [vars(p) for p in problems]}
    output.mark_done(output_uri, part, sum(sources.values()), summary, _files_sha256(calls))


def prepare_part(item: pa.Table, options: CallImportOptions) -> pa.Table:
    """--asr, CPU stage: a part's calls with their levels and transcript or energy turns, as
    one pickled payload (the levels of a 2-hour stereo call are 1.9 MB)."""
    calls = json.loads(item.column("calls")[0].as_py())
    prepared = [prepare_call(*call, options.energy) for call in calls]
    payload = pickle.dumps({"calls": calls, "prepared": prepared})
    return pa.table({"part": item.column("part"), "payload": pa.array([payload], pa.binary())})


class RecognitionStage:
    """--asr, model stage: one Whisper per actor. Recognises each call of a part that has no
    usable transcript (all calls with --asr-all), then writes the part and its done marker.
    A killed actor's part is redone whole by its retry: nothing is written before the end."""

    def __init__(self, output_uri: str, options: CallImportOptions, threads: int = 1):
        from ..asr import Recogniser

        device = "cuda" if options.gpus_per_actor else "cpu"
        self.recogniser = Recogniser(options.asr, device=device, threads=threads)
        self.output_uri, self.options = output_uri, options

    def __call__(self, item: pa.Table) -> pa.Table:
        payload = pickle.loads(item.column("payload")[0].as_py())
        prepared = [self._heard(call) for call in payload["prepared"]]
        imported = call_rows(prepared, self.options.split, self.options.roles)
        _write_part(self.output_uri, item.column("part")[0].as_py(), imported, payload["calls"])
        return pa.table({"node": [ray.get_runtime_context().get_node_id()]})

    def _heard(self, call: PreparedCall) -> PreparedCall:
        wanted = call.how == "energy" or (call.how == "transcript" and self.options.asr.all_calls)
        if not wanted or call.levels is None:
            return call
        heard = self.recogniser.call(call.audio_uri, call.levels, call.duration_s, FRAME_S)
        crash_once("recognition")
        return heard_turns(call, heard)
