"""Stage wiring: actor pools sized from the cluster, a stream of task items through the
stages into fragments, and compaction of the parts, for `extract` and `predict --extract`."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from .. import fragments, output
from ..errors import ConfigError, InputError
from ..pools import PoolSize, StageDemand, reserve_cpus, size_pools
from ..tasks import chunk_items
from .stages import ReadOptions, ReadStage

WRITER_CPUS = 0.25  # fragment writes and compaction are I/O: a quarter CPU each
READER_CPUS = 0.1  # reading a task's rows is I/O and Arrow: it must not take a model's core (pools.reserve_cpus
# leaves 0.5 CPU on a laptop for one reader and the fragment writers)
MODEL_STAGES = ("text", "visual", "score")  # torch stages: their threads follow their CPUs

Stage = tuple[StageDemand, type, dict]  # (demand, stage class, constructor kwargs)


def pool_sizes(demands: list[StageDemand], actors: int | None) -> dict[str, PoolSize]:
    resources = ray.cluster_resources()
    try:
        return size_pools(demands, float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0)), actors)
    except ValueError as exc:
        raise ConfigError(f"{exc} (drop --gpus-per-actor, or connect to a cluster with GPUs)") from None


def describe_pools(sizes: dict[str, PoolSize]) -> str:
    return ", ".join(f"{n} {s.actors}x{s.num_cpus:g} CPU" + (f" {s.num_gpus:g} GPU" if s.num_gpus else "") for n, s in sizes.items())


def map_stages(ds, stages: list[Stage], sizes: dict[str, PoolSize], batch_size: int | None):
    """Each stage as an actor pool over the stream; batch_size None hands each stage whole blocks.
    The last stage's rows name the node that made them (NODE), for the job's summary."""
    for k, (demand, stage, kwargs) in enumerate(stages):
        pool = sizes[demand.name]
        stage = node_tagging(stage) if k == len(stages) - 1 else stage
        if demand.name in MODEL_STAGES or kwargs.get("speech_model"):
            kwargs = {**kwargs, "threads": max(1, int(pool.num_cpus))}
        ds = ds.map_batches(
            stage,
            fn_constructor_kwargs=kwargs,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
        )
    return ds


def stream_chunks(tasks: list[dict], todo: list[int], read: ReadOptions, stages: list[Stage], sizes: dict[str, PoolSize],
                  output_uri: str, run_id: str, columns: list[str] | None = None) -> list[str]:
    """Chunk items -> ReadStage -> stages (actor pools, whole blocks) -> fragments. Returns the
    nodes whose actors made the rows (the last stage's). Only chunk items (slices of files) pass
    through the driver."""
    resume = {p for p in fragments.fragment_parts(output_uri)}  # parts an earlier run began
    items = chunk_items(tasks, todo, resume)
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one block per chunk: every actor gets work
    ds = ds.map_batches(ReadStage, fn_constructor_kwargs={"options": read}, batch_size=1, batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=sizes_readers(sizes)), num_cpus=READER_CPUS)
    ds = map_stages(ds, stages, sizes, batch_size=None)
    # An actor, not tasks: a task per block started fresh worker processes that took half a core
    # each from the model actors (measured: extract at 0.53x the encoder alone).
    ds = ds.map_batches(FragmentWriter, fn_constructor_kwargs={"output_uri": output_uri, "run_id": run_id, "columns": columns},
                        batch_size=None, batch_format="pyarrow", num_cpus=WRITER_CPUS, compute=ActorPoolStrategy(size=1))
    return sorted({row["node"] for row in ds.take_all() if row["node"]})


NODE = "_node"  # the node whose actor made a row (the last stage's), dropped before writing


def node_tagging(stage: type) -> type:
    """`stage` (same name, so its actors are named as before) whose output rows carry NODE."""

    def call(self, batch: pa.Table) -> pa.Table:
        out = stage.__call__(self, batch)
        return out.append_column(NODE, pa.array([ray.get_runtime_context().get_node_id()] * out.num_rows, pa.string()))

    return type(stage.__name__, (stage,), {"__call__": call})


class FragmentWriter:
    """Finished blocks in, written as fragments (their `columns` only); out, one row per
    fragment with the node whose actor made its rows."""

    def __init__(self, output_uri: str, run_id: str, columns: list[str] | None):
        self.output_uri, self.run_id, self.columns = output_uri, run_id, columns

    def __call__(self, batch: pa.Table) -> pa.Table:
        node = batch.column(NODE)[0].as_py() if batch.num_rows else None
        batch = batch.drop_columns([NODE])
        written = fragments.write_fragments(batch.select(self.columns) if self.columns else batch, self.output_uri, self.run_id)
        return written.append_column("node", pa.array([node] * written.num_rows, pa.string()))


def sizes_readers(sizes: dict[str, PoolSize]) -> int:
    """One reader per two actors of the widest pool after them (a reader is light, so a
    reader's chunks feed several actors), within the CPUs the pools leave (pools.reserve_cpus) beside
    one fragment writer: a laptop's 2 CPUs get one reader."""
    widest = max((s.actors for s in sizes.values()), default=1)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    room = int((reserve_cpus(cpus) - WRITER_CPUS) / READER_CPUS + 1e-9)
    return max(1, min(-(-widest // 2), room))


def compact_parts(output_uri: str, plan: output.Plan, writers: dict, run_id: str) -> dict[str, float]:
    """Merge each part's fragments into its file(s), in parallel Ray tasks (`writers`: part -> writer)."""
    compact = ray.remote(num_cpus=WRITER_CPUS)(fragments.compact_part)
    results = ray.get([compact.remote(output_uri, plan, p, writers(p), run_id) for p in fragments.fragment_parts(output_uri)])
    changed = [r["changed"] for r in results if r["changed"]]
    if changed:
        raise InputError(f"{output_uri}: the input changed while this output was being resumed (its rows read in two runs "
                         f"differ: {'; '.join(changed[:3])}); pass --overwrite to start over")
    return {c: float(sum(r["stats"][c] for r in results)) for c in fragments.STATS_COLUMNS}


def check_all_done(output_uri: str, plan: output.Plan) -> dict[int, dict]:
    """Every part has its done marker with the plan's rows; returns the markers."""
    done = output.finished_parts(output_uri, plan)
    missing = [p for p in range(plan.parts) if p not in done]
    if missing:
        raise InputError(f"{output_uri}: parts {missing[:5]} are not finished after the run (rerun to resume)")
    return done


def fewer_actors(size: PoolSize, tasks: int) -> PoolSize:
    return replace(size, actors=min(size.actors, tasks))  # an idle actor would only load its model
