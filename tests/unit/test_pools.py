"""Pool sizes from cluster resources: a laptop never over-subscribes, a big cluster fills."""

import pytest

from sdt_ray.pools import StageDemand, reserve_cpus, size_pools

MEDIA_STAGES = [
    StageDemand("audio", weight=3.0),
    StageDemand("frames", weight=3.0),
    StageDemand("text"),
    StageDemand("visual"),
]


def total_cpus(sizes):
    return sum(s.actors * s.num_cpus for s in sizes.values())


def test_laptop_with_two_cpus_leaves_room_for_the_writers():
    sizes = size_pools(MEDIA_STAGES, cpus=2)
    assert all(s.actors == 1 for s in sizes.values())
    assert total_cpus(sizes) <= 2 - reserve_cpus(2) + 1e-6  # 1.5 CPUs for four single-actor pools
    assert sizes["audio"].num_cpus == pytest.approx(3 * sizes["text"].num_cpus)  # by weight: 0.5625 vs 0.1875


def test_hundred_nodes_are_filled():
    cpus = 100 * 16
    sizes = size_pools(MEDIA_STAGES, cpus=cpus)
    assert total_cpus(sizes) <= cpus - reserve_cpus(cpus) + 1e-6
    assert total_cpus(sizes) >= 0.95 * (cpus - reserve_cpus(cpus))
    assert sizes["audio"].actors == 588 and sizes["text"].actors == 196  # 1568 CPUs split 3:3:1:1


def test_one_gpu_is_shared_by_the_two_encoders():
    stages = [StageDemand("audio"), StageDemand("text", gpus_per_actor=1.0), StageDemand("visual", gpus_per_actor=1.0)]
    sizes = size_pools(stages, cpus=8, gpus=1)
    assert sizes["text"].num_gpus == sizes["visual"].num_gpus == 0.5
    assert sizes["text"].actors == sizes["visual"].actors == 1
    eight = size_pools(stages, cpus=64, gpus=8)
    assert eight["text"].actors == 4 and eight["text"].num_gpus == 1.0
    assert total_cpus(eight) <= 64 - reserve_cpus(64) + 1e-6


def test_fixed_actor_count_shares_each_stages_cpus():
    """--actors 4 on 4 CPUs: four audio actors must not take every CPU (the text pool would never start)."""
    stages = [StageDemand("audio", weight=3.0), StageDemand("text")]
    auto = size_pools(stages, cpus=4)
    fixed = size_pools(stages, cpus=4, actors=4)
    assert all(s.actors == 4 for s in fixed.values())
    assert total_cpus(fixed) == pytest.approx(total_cpus(auto), abs=1e-3) and total_cpus(fixed) <= 4 - reserve_cpus(4)


def test_gpu_stage_without_gpus_is_refused():
    with pytest.raises(ValueError, match="ask for GPUs"):
        size_pools([StageDemand("text", gpus_per_actor=1.0)], cpus=4, gpus=0)


def test_one_stage_on_a_laptop_uses_both_cores():
    """1.5 CPUs after the reserve: two actors of 0.75 (one torch thread each), not one and an idle core."""
    sizes = size_pools([StageDemand("score")], cpus=2)
    assert sizes["score"].actors == 2 and sizes["score"].num_cpus == pytest.approx(0.75)
    assert total_cpus(sizes) <= 2 - reserve_cpus(2) + 1e-6
