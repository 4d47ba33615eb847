import numpy as np

from sdt_ray.metrics import classification_report


def test_report_against_hand_values():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    # a: P 1/2 R 1/2 F1 1/2; b: P 2/3 R 1 F1 4/5; c: P 0 R 0 F1 0.
    assert r["accuracy"] == 3 / 5
    assert np.isclose(r["per_class"]["b"]["f1"], 0.8)
    assert np.isclose(r["weighted_f1"], (2 * 0.5 + 2 * 0.8 + 1 * 0.0) / 5)
    assert np.isclose(r["macro_f1"], (0.5 + 0.8 + 0.0) / 3)
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert r["per_class"]["c"]["support"] == 1


def test_absent_class_has_zero_weight():
    r = classification_report(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert r["weighted_f1"] == 1.0
    assert r["per_class"]["b"]["support"] == 0
