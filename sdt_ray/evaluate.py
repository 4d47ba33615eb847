"""Score a checkpoint on one split of a features table and write the figures.

EVAL_DIR/metrics.json        accuracy, weighted/macro F1, per-class, confusion matrix, calibration
EVAL_DIR/confusion_matrix.png
EVAL_DIR/reliability.png     confidence against accuracy, before and after the checkpoint's temperature
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .checkpoint import LoadedModel, load_checkpoint
from .collate import batches
from .dialogues import Exclusions, dialogue_rows, select_split, to_dialogues, usable_rows
from .calibration import ECE_BINS, scaling_figures
from .engine import Predictions, predict
from .errors import ConfigError
from .text_card import card_from_metadata, label_leaks
from .metrics import classification_report
from .plots import confusion_matrix_png, reliability_png
from .schema import feature_column, validate_features

TEST_SELECTED = "test-selected, not a fair estimate"


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    exclusions: Exclusions
    output: str

    def describe(self) -> str:
        """Warnings, what was left out, the per-class table, and the files written."""
        lines = list(self.metrics["warnings"])
        if self.exclusions:
            lines.append(f"excluded: {self.exclusions.describe()}")
        lines.append(format_report(self.metrics))
        written = f"wrote {self.output}/metrics.json, {self.output}/confusion_matrix.png"
        if self.metrics.get("calibration", {}).get("n_utterances"):
            written += f" and {self.output}/reliability.png"
        return "\n".join(lines + [written])


def evaluate(
    checkpoint_uri: str, features_uri: str, split: str, output_uri: str, batch_size: int = 16, without: tuple[str, ...] = ()
) -> Evaluation:
    """Metrics of a checkpoint on one split. `without`: modalities to score as absent even where
    the table has them (an ablation: the model masks them, as for a call without a transcript)."""
    loaded = load_checkpoint(checkpoint_uri)
    config = loaded.config
    unknown = sorted(set(without) - set(config.modalities))
    if unknown:
        raise ConfigError(f"--without {','.join(unknown)}: the checkpoint's modalities are {','.join(config.modalities)}")
    table = storage.read_table(features_uri)
    leaks = label_leaks(card_from_metadata(table.schema), {split: table.filter(pc.equal(table.column("split"), split))})
    table = table.drop_columns([feature_column(m) for m in without if feature_column(m) in table.column_names])
    validate_features(table, features_uri, expected_dims=dict(zip(config.modalities, config.input_dims)), absent_ok=True)
    predictions, exclusions = score_split(loaded, table, split, features_uri, batch_size)
    metrics = classification_report(*predictions.labelled(), loaded.labels)
    calibration = calibration_figures(predictions, loaded.temperature)
    metrics.update(
        split=split,
        checkpoint=checkpoint_uri,
        model_id=loaded.model_id,
        features=features_uri,
        excluded=exclusions.counts,
        scored_without=exclusions.absent,  # modality -> utterances scored without it (masked)
        without=list(without),
        selected_on=loaded.meta.get("recipe", {}).get("train", {}).get("select_on", "dev"),
        warnings=leaks,
        calibration={**calibration, **fitted(loaded.calibration)},
    )
    if metrics["selected_on"] == "test":  # the paper's protocol: say so wherever its figures go
        metrics["selection"] = TEST_SELECTED
    title = f"{split}: acc {metrics['accuracy']:.3f}, weighted F1 {metrics['weighted_f1']:.3f}"
    _write(metrics, output_uri, title + (f" ({TEST_SELECTED})" if "selection" in metrics else ""), reliability_of=split)
    return Evaluation(metrics, exclusions, output_uri)


def score_split(loaded: LoadedModel, table: pa.Table, split: str, features_uri: str,
                batch_size: int = 16) -> tuple[Predictions, Exclusions]:
    """The checkpoint's predictions for one split of a features table, and what it left out."""
    config = loaded.config
    table, exclusions = usable_rows(select_split(table, split, features_uri), config.modalities)
    dialogues = to_dialogues(dialogue_rows(table, config, loaded.labels, features_uri), config)
    return predict(loaded.model, batches(dialogues, batch_size, config.max_speakers)), exclusions


def fitted(calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Where and how a checkpoint's temperature was fitted; None for an uncalibrated checkpoint.
    Checkpoints from before `fitted_by` was recorded were all fitted by NLL."""
    if not calibration:
        return {"fitted_on": None, "fitted_by": None}
    return {"fitted_on": calibration.get("fitted_on"), "fitted_by": calibration.get("fitted_by", "nll")}


def calibration_figures(predictions: Predictions, temperature: float) -> dict[str, Any]:
    """ECE (and the reliability bins) of the labelled utterances at T = 1 and at the
    checkpoint's temperature; the two are equal for an uncalibrated checkpoint."""
    logits, labels = predictions.labelled_logits()
    figures = {"temperature": temperature, "bins": ECE_BINS, "n_utterances": int(len(labels))}
    return figures | (scaling_figures(logits, labels, temperature, with_reliability=True) if len(labels) else {})


def evaluate_text(encoder_dir: str, utterances_uri: str, split: str, output_uri: str, batch_size: int = 64) -> Evaluation:
    """The utterance-level figures of a `finetune-text` encoder's own head on one split of an
    utterances table: what the fine-tuned encoder does before any context model."""
    import torch

    from .text_classifier import classifier_rows, load_classifier, predict_classes
    from .schema import validate_utterances

    classifier, tokenizer, card = load_classifier(encoder_dir)
    table = validate_utterances(storage.read_table(utterances_uri), utterances_uri)
    spec = card.text_input()
    rows, left_out = classifier_rows(table, card.labels, spec, splits=(split,))
    if rows.num_rows == 0:
        raise ConfigError(f"{utterances_uri}: no labelled {split} utterances with text")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    contexts = rows.column("text_context").to_pylist() if spec.has_context else None
    predicted = predict_classes(classifier.to(device), tokenizer, rows.column("text").to_pylist(), contexts,
                                card.max_length, batch_size, device, card.precision, windowed=spec.window > 0)
    metrics = classification_report(rows.column("label_id").to_numpy(), predicted.numpy(), card.labels)
    leaks = label_leaks(card, {split: rows})
    metrics.update(split=split, encoder=encoder_dir, utterances=utterances_uri, context=card.context, future=card.future,
                   speakers=card.speakers,
                   encoder_selection=card.selection, left_out=left_out, warnings=leaks)
    title = f"{split}, encoder alone: acc {metrics['accuracy']:.3f}, weighted F1 {metrics['weighted_f1']:.3f}"
    _write(metrics, output_uri, title)
    return Evaluation(metrics, Exclusions(left_out), output_uri)


def _write(metrics: dict[str, Any], output_uri: str, title: str, reliability_of: str | None = None) -> None:
    storage.write_text(storage.join(output_uri, "metrics.json"), json.dumps(metrics, indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        confusion_matrix_png(metrics["confusion_matrix"], metrics["labels"], os.path.join(tmp, "confusion_matrix.png"), title)
        if reliability_of is not None and metrics["calibration"].get("n_utterances"):
            reliability_png(metrics["calibration"], os.path.join(tmp, "reliability.png"), reliability_of)
        storage.upload_dir(tmp, output_uri)


def format_report(metrics: dict[str, Any]) -> str:
    """A terminal table: per-class precision/recall/F1/support, then the totals."""
    width = max(len(label) for label in metrics["labels"]) + 2
    lines = [f"{'label':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for label in metrics["labels"]:
        row = metrics["per_class"][label]
        lines.append(f"{label:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>10d}")
    lines.append("")
    lines.append(f"{'accuracy':<{width}}{metrics['accuracy']:>30.4f}{metrics['n_utterances']:>10d}")
    lines.append(f"{'weighted F1':<{width}}{metrics['weighted_f1']:>30.4f}")
    lines.append(f"{'macro F1':<{width}}{metrics['macro_f1']:>30.4f}")
    if metrics.get("calibration", {}).get("n_utterances"):
        c = metrics["calibration"]
        lines.append(f"{'ECE':<{width}}{c['ece_before']:>30.4f}  at T = 1; {c['ece_after']:.4f} at the checkpoint's T = {c['temperature']:.3f}")
    if "selection" in metrics:
        lines.append(f"epoch selected on the test split: {metrics['selection']}")
    return "\n".join(lines)
