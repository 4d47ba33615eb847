"""Temperature scaling and the calibration error, on hand-made examples whose answers are known."""

import math

import numpy as np
import pytest

from sdt_ray.calibration import (
    ECE_GRID_STEP,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_ece,
    nll,
    reliability,
    softmax,
)


def two_class(margin: float, right: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n utterances with logits (margin, 0); `right` of them are labelled class 0."""
    logits = np.tile([margin, 0.0], (n, 1))
    labels = np.array([0] * right + [1] * (n - right))
    return logits, labels


def test_the_fitted_temperature_makes_the_confidence_the_accuracy():
    # Every utterance has logits (4, 0) and 80% are class 0. NLL is lowest where the model says
    # p(class 0) = 0.8, i.e. sigmoid(4 / T) = 0.8: T = 4 / ln(0.8 / 0.2) = 4 / ln 4 = 2.885.
    logits, labels = two_class(4.0, 80, 100)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0 / math.log(4.0), rel=1e-4)
    assert softmax(logits, temperature)[0, 0] == pytest.approx(0.8, abs=1e-4)
    assert nll(logits, labels, temperature) < nll(logits, labels)


def test_an_underconfident_model_gets_a_temperature_below_one():
    logits, labels = two_class(0.5, 95, 100)  # sigmoid(0.5) = 0.62 but 95% are right: T = 0.5 / ln 19
    assert fit_temperature(logits, labels) == pytest.approx(0.5 / math.log(19.0), rel=1e-4)


def test_the_ece_fit_makes_the_confidence_the_accuracy():
    # Logits (ln 9, 0): confidence sigmoid(ln 9 / T), 0.9 at T = 1; 75% are right. All utterances
    # share one bin, so ECE = |0.75 - confidence| is 0 where ln 9 / T = ln 3: T = 2.
    logits, labels = two_class(math.log(9.0), 75, 100)
    temperature = fit_temperature_ece(logits, labels)
    assert abs(math.log(temperature / 2.0)) <= ECE_GRID_STEP / 2  # the grid point nearest 2
    assert expected_calibration_error(softmax(logits, temperature), labels) < 1e-3


def test_where_the_top_label_is_calibrated_the_ece_fit_keeps_one_and_nll_does_not():
    # p = (0.8, 0.19, 0.01) and 80% right: the confidence is the accuracy at T = 1 (ECE 0). The
    # 20% wrong are all labelled the 0.01 class, so NLL gains by flattening: it wants T > 1.
    logits = np.tile(np.log([0.8, 0.19, 0.01]), (100, 1))
    labels = np.array([0] * 80 + [2] * 20)
    assert fit_temperature_ece(logits, labels) == 1.0
    assert fit_temperature(logits, labels) > 1.2
    assert calibrate(logits, labels, "dev").temperature == 1.0
    assert calibrate(logits, labels, "dev", by="nll").temperature > 1.2
    with pytest.raises(ValueError, match="calibrate by 'mse'"):
        calibrate(logits, labels, "dev", by="mse")


def test_nll_by_hand():
    # softmax of (ln 3, 0) is (0.75, 0.25): -log 0.75 for the first, -log 0.25 for the second
    logits = np.array([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    assert nll(logits, np.array([0, 1])) == pytest.approx(-(math.log(0.75) + math.log(0.25)) / 2)
    assert nll(logits * 2, np.array([0, 1]), temperature=2.0) == pytest.approx(nll(logits, np.array([0, 1])))


def test_ece_by_hand():
    # 10 predictions at confidence 0.9 (bin 14 of 15), 7 right; 10 at 0.6 (bin 9), 6 right:
    # ECE = 0.5 * |0.7 - 0.9| + 0.5 * |0.6 - 0.6| = 0.1
    probabilities = np.array([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10)
    labels = np.array([0] * 7 + [1] * 3 + [0] * 6 + [1] * 4)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.1)
    table = reliability(probabilities, labels)
    assert table["count"][13] == 10 and table["count"][8] == 10 and sum(table["count"]) == 20
    assert table["accuracy"][13] == pytest.approx(0.7) and table["confidence"][8] == pytest.approx(0.6)
    assert table["accuracy"][0] is None  # an empty bin: no number, valid JSON
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, int)) == 0.0


def test_calibrate_reports_both_sides_and_moves_no_argmax():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 6.0 * np.eye(3)[labels] * (rng.random(300) < 0.6)[:, None]  # 60% very sure and right
    logits *= 3.0  # over-confident
    for by in ("ece", "nll"):
        result = calibrate(logits, labels, "dev", by=by)
        assert result.temperature > 1.0 and result.fitted_on == "dev" and result.n_utterances == 300
        assert result.fitted_by == by
        assert result.nll_after < result.nll_before and result.ece_after < result.ece_before
        assert (softmax(logits, result.temperature).argmax(1) == logits.argmax(1)).all()
