"""The scoring bench's parts on a tiny corpus (no timings asserted: `make bench` measures)."""

import os

import pyarrow.compute as pc

from sdt_ray import storage
from benchmarks.bench_scoring import MELD_DIMS, RssSampler, bare_forward, save_model, stage_in_process, write_corpus
from sdt_ray.schema import validate_features


def test_corpus_bare_pass_and_stage_agree_on_the_rows(tmp_path):
    features = write_corpus(tmp_path / "features", 300)
    table = storage.read_table(features)
    assert table.num_rows >= 300
    assert validate_features(table, features, expected_dims=MELD_DIMS).dims == MELD_DIMS
    runs = pc.run_end_encode(table.column("dialogue_id").combine_chunks()).run_ends
    assert len(runs) == len(pc.unique(table.column("dialogue_id")))  # each dialogue's rows together

    checkpoint = save_model(tmp_path / "model")
    bare = bare_forward(features, checkpoint)
    with RssSampler(interval_s=0.05) as rss:
        stage = stage_in_process(features, checkpoint, str(tmp_path / "predictions"))
    assert bare["utterances"] == stage["utterances"] == table.num_rows
    scored = storage.read_table(str(tmp_path / "predictions"))
    assert scored.num_rows == table.num_rows and scored.column("error").null_count == table.num_rows
    assert rss.driver_mib > 50  # this process, sampled while the stage ran; the sampler itself: the test below


def test_rss_sampler_sees_a_known_allocation():
    """256 MiB touched inside the sampler raise its peak by about that much over the RSS before."""
    import time

    import numpy as np

    from benchmarks.bench_scoring import _rss_mib

    before = _rss_mib(os.getpid())
    with RssSampler(interval_s=0.01) as rss:
        block = np.ones(256 * 2**20, dtype=np.uint8)  # 256 MiB, every page written
        time.sleep(0.2)  # several samples while it is held
        del block
    assert 200 < rss.driver_mib - before < 400
