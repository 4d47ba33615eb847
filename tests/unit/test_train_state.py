"""The training state both Ray Train jobs checkpoint (ray_train.TrainState), by hand."""

import json

import pytest

from sdt_ray.errors import ConfigError
from sdt_ray.ray_train import STATE_FILE, TrainState
from sdt_ray.train import _check_run_dir


def test_epochs_move_the_best_and_the_patience_count():
    state = TrainState()
    assert state.finish_epoch({"epoch": 0, "loss": 2.0}, 0.40) is True
    assert state.finish_epoch({"epoch": 1, "loss": 1.5}, 0.38) is False
    assert state.finish_epoch({"epoch": 2, "loss": 1.2}, 0.40) is False  # equal is no gain
    assert (state.epoch, state.best_epoch, state.best_score, state.bad_epochs) == (3, 0, 0.40, 2)
    assert state.finish_epoch({"epoch": 3, "loss": 1.0}, 0.45) is True
    assert (state.best_epoch, state.bad_epochs) == (3, 0)
    assert [r["best_epoch"] for r in state.history] == [0, 0, 0, 3]
    assert state.best == {"epoch": 3, "loss": 1.0, "best_epoch": 3}


def test_a_rank_that_does_not_score_keeps_the_count():
    state = TrainState()
    assert state.finish_epoch({"epoch": 0}, None) is False
    assert (state.epoch, state.best_epoch, state.bad_epochs, state.best) == (1, -1, 0, {})


def test_it_round_trips_and_reads_older_keys(tmp_path):
    state = TrainState(epoch=2, best_score=0.5, best_epoch=1, bad_epochs=1, history=[{"epoch": 0}, {"epoch": 1}], attempt=1)
    state.write(str(tmp_path))
    assert TrainState.read(str(tmp_path)) == state
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    (tmp_path / STATE_FILE).write_text(json.dumps({**saved, "retired_key": 3}))  # a key a later version dropped
    assert TrainState.read(str(tmp_path)) == state


def test_resuming_a_run_checkpointed_by_an_older_layout_is_one_clear_error(tmp_path):
    run = tmp_path / "run"
    (run / "ray" / "sdt-old" / "checkpoint_000001").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"ray_run_name": "sdt-old"}))
    (run / "ray" / "sdt-old" / "checkpoint_000001" / "training_state.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="older sdt-ray"):
        _check_run_dir(str(run), resume=True)
    (run / "ray" / "sdt-old" / "checkpoint_000001" / STATE_FILE).write_text("{}")  # today's layout: resumable
    _check_run_dir(str(run), resume=True)
