"""The training state both Ray Train jobs checkpoint (ray_train.TrainState), by hand."""

import json

from sdt_ray.ray_train import STATE_FILE, TrainState


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
