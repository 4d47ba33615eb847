"""Actor-pool sizes for the extract pipeline, from the cluster's resources.

Every stage gets at least one actor and the pools together never ask for more
CPUs or GPUs than the cluster has, minus a reserve for the tasks that feed and
drain them: on a 2-CPU laptop that means fractional CPUs per actor (RAY_NOTES:
whole-CPU pools there deadlock), on a large cluster the pools fill it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StageDemand:
    name: str
    cpus_per_actor: float = 1.0  # what one actor would like
    gpus_per_actor: float = 0.0  # > 0: a model stage on GPUs
    weight: float = 1.0  # share of the CPU budget relative to other CPU stages (cost per row)


@dataclass(frozen=True)
class PoolSize:
    actors: int
    num_cpus: float  # per actor
    num_gpus: float = 0.0  # per actor


def reserve_cpus(cpus: float) -> float:
    """CPUs left to the tasks that write fragments: half a CPU on a laptop, 2% of a big cluster."""
    return max(0.5, 0.02 * cpus)


def size_pools(stages: list[StageDemand], cpus: float, gpus: float = 0.0, actors: int | None = None) -> dict[str, PoolSize]:
    """Per stage: actors and resources per actor. `actors` fixes the count per stage; each
    stage's share of the cluster is then split among them (never more CPUs in all)."""
    sizes = _automatic(stages, cpus, gpus)
    if actors:
        sizes = {
            name: PoolSize(actors, round(s.actors * s.num_cpus / actors, 4), s.actors * s.num_gpus / actors)
            for name, s in sizes.items()
        }
    return sizes


def _automatic(stages: list[StageDemand], cpus: float, gpus: float) -> dict[str, PoolSize]:
    bad = [s.name for s in stages if s.cpus_per_actor <= 0 or s.gpus_per_actor < 0]
    if bad:
        raise ValueError(f"stages {bad} need a positive CPU count per actor and no negative GPU count")
    sizes: dict[str, PoolSize] = {}
    gpu_stages = [s for s in stages if s.gpus_per_actor > 0]
    budget = cpus - reserve_cpus(cpus)
    if gpu_stages and gpus <= 0:
        raise ValueError(f"stages {[s.name for s in gpu_stages]} ask for GPUs but the cluster has none")
    for stage in gpu_stages:
        share = gpus / len(gpu_stages)
        per_actor = min(stage.gpus_per_actor, share)
        actors = max(1, math.floor(share / per_actor + 1e-9))
        # A GPU actor still needs a little CPU to feed its device.
        num_cpus = min(stage.cpus_per_actor, max(0.1, budget / (2 * len(stages) * actors)))
        sizes[stage.name] = PoolSize(actors, num_cpus, per_actor)
        budget -= actors * num_cpus
    cpu_stages = [s for s in stages if s.gpus_per_actor <= 0]
    total_weight = sum(s.weight for s in cpu_stages)
    for stage in cpu_stages:
        share = max(budget, 0.1 * len(cpu_stages)) * stage.weight / total_weight
        per_actor = min(stage.cpus_per_actor, share)
        # Round, then shrink each actor to fit the share: 1.5 CPUs make two actors of 0.75
        # (both cores busy, one torch thread each), not one actor and an idle core.
        actors = max(1, round(share / per_actor + 1e-9))
        per_actor = min(per_actor, share / actors)
        sizes[stage.name] = PoolSize(actors, math.floor(per_actor * 1e4) / 1e4)
    return sizes
