"""Turn public ERC corpora (CSV) into the utterances table.

MELD:     {train,dev,test}_sent_emo.csv, a dialogue is Dialogue_ID within a split.
EmoryNLP: emorynlp_{train,dev,test}_final.csv, a dialogue is (Season, Episode, Scene_ID),
          and Speaker is a list written as a Python literal string.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from .errors import InputError
from .schema import SPLITS, UTTERANCES_REQUIRED, UTTERANCES_SCHEMA, validate_utterances, with_labels

DEMO_CORPUS = Path(__file__).parent / "demo" / "meld_slice"  # bundled MELD slice (GPL-3.0, see SOURCE.txt)
DEMO_MEDIA = Path(__file__).parent / "demo" / "media_corpus" / "manifest.csv"  # 57 MELD dev utterances as video clips
MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]  # sdt_spec §9 order
EMORYNLP_LABELS = ["Joyful", "Mad", "Neutral", "Peaceful", "Powerful", "Sad", "Scared"]


@dataclass(frozen=True)
class Corpus:
    name: str
    files: dict[str, str]  # split -> file name
    labels: list[str]


MELD = Corpus("meld", {s: f"{s}_sent_emo.csv" for s in ("train", "dev", "test")}, MELD_LABELS)
EMORYNLP = Corpus("emorynlp", {s: f"emorynlp_{s}_final.csv" for s in ("train", "dev", "test")}, EMORYNLP_LABELS)
CORPORA = {c.name: c for c in (MELD, EMORYNLP)}


@dataclass(frozen=True)
class WrittenTable:
    """An utterances table that `sdt-ray import meld|emorynlp|manifest` wrote."""

    output: str
    table: pa.Table
    by_split: bool = True  # corpora count per split; a manifest counts in all

    def describe(self) -> str:
        if not self.by_split:
            dialogues = len(self.table.column("dialogue_id").unique())
            return f"wrote {self.output}: {self.table.num_rows} utterances in {dialogues} dialogues"
        counts = self.table.group_by("split").aggregate([("dialogue_id", "count_distinct"), ([], "count_all")]).to_pylist()
        counts.sort(key=lambda r: SPLITS.index(r["split"]))  # a threaded group_by returns groups in any order
        summary = ", ".join(f"{r['split']} {r['count_all']} utterances / {r['dialogue_id_count_distinct']} dialogues" for r in counts)
        return f"wrote {self.output}: {summary}"


def write_corpus(name: str, source_dir: str | Path, output_uri: str, limit_dialogues: int | None = None) -> WrittenTable:
    """A public corpus's CSVs as an utterances table at `output_uri`."""
    from .storage import write_table

    table = import_corpus(name, source_dir, limit_dialogues)
    write_table(table, output_uri)
    return WrittenTable(output_uri, table)


def write_manifest(manifest: str | Path, output_uri: str) -> WrittenTable:
    """Your own corpus (a CSV manifest) as an utterances table at `output_uri`."""
    from .storage import write_table

    table = import_manifest(manifest)
    write_table(table, output_uri)
    return WrittenTable(output_uri, table, by_split=False)


def import_corpus(name: str, source_dir: str | Path, limit_dialogues: int | None = None) -> pa.Table:
    """Read a corpus folder into the utterances table (labels recorded in the schema metadata).

    limit_dialogues keeps the first N dialogues of each split (for demos and quick runs).
    """
    corpus = CORPORA[name]
    frames = []
    for split, file_name in corpus.files.items():
        path = Path(source_dir) / file_name
        if not path.exists():
            raise InputError(f"{path}: not found; {name} needs {sorted(corpus.files.values())} in {source_dir}")
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame = _READERS[name](raw, str(path), split)
        frame["split"] = split
        if limit_dialogues is not None:
            keep = frame["dialogue_id"].drop_duplicates().head(limit_dialogues)
            frame = frame[frame["dialogue_id"].isin(keep)]
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    unknown = sorted(set(frame["label"]) - set(corpus.labels))
    if unknown:
        raise InputError(f"{source_dir}: unknown {name} labels {unknown}; expected {corpus.labels}")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = validate_utterances(table, str(source_dir))
    return table.replace_schema_metadata(with_labels(UTTERANCES_SCHEMA, corpus.labels).metadata)


def import_manifest(manifest: str | Path, labels: list[str] | None = None) -> pa.Table:
    """A CSV with the utterances table's columns (dialogue_id, utterance_index, speaker,
    text, label, split, and optionally audio_uri, video_uri, start_s, end_s, channel).

    Relative media paths are taken relative to the CSV's folder and made absolute;
    s3:// and file:// URIs pass through. `labels` fixes the label order recorded in
    the table (default: MELD's when every label is a MELD label, else sorted).
    """
    path = Path(manifest)
    if not path.is_file():
        raise InputError(f"{manifest}: no such manifest")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require(raw, list(UTTERANCES_REQUIRED), str(path))
    frame = raw.replace({"": None})
    frame["utterance_index"] = pd.to_numeric(frame["utterance_index"], errors="raise").astype("int32")
    for column in ("start_s", "end_s"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
    if "channel" in frame:
        frame["channel"] = pd.to_numeric(frame["channel"], errors="raise").astype("Int16")
    for column in ("audio_uri", "video_uri"):
        if column in frame:
            frame[column] = [_absolute(uri, path.parent) for uri in frame[column]]
    found = sorted({v for v in frame["label"] if v is not None})
    labels = labels or (MELD_LABELS if set(found) <= set(MELD_LABELS) else found)
    table = validate_utterances(pa.Table.from_pandas(frame, preserve_index=False), str(path))
    return table.replace_schema_metadata(with_labels(UTTERANCES_SCHEMA, labels).metadata)


def _absolute(uri: str | None, base: Path) -> str | None:
    if not uri or "://" in uri or Path(uri).is_absolute():
        return uri
    return str((base / uri).resolve())


def _read_meld(raw: pd.DataFrame, source: str, split: str) -> pd.DataFrame:
    _require(raw, ["Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"], source)
    frame = pd.DataFrame(
        {
            # Dialogue_ID restarts at 0 in each MELD file: the split is part of the id.
            "dialogue_id": f"meld_{split}_" + raw["Dialogue_ID"].str.strip(),
            "utterance_index": pd.to_numeric(raw["Utterance_ID"], errors="raise").astype("int32"),
            "speaker": raw["Speaker"].str.strip(),
            "text": raw["Utterance"].map(_clean_text),
            "label": raw["Emotion"].str.strip(),
        }
    )
    return frame.sort_values(["dialogue_id", "utterance_index"], kind="stable", key=_natural_key)


def _read_emorynlp(raw: pd.DataFrame, source: str, split: str) -> pd.DataFrame:
    _require(raw, ["Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode"], source)
    dialogue = "emorynlp_s" + raw["Season"].str.strip() + "_e" + raw["Episode"].str.strip() + "_c" + raw["Scene_ID"].str.strip()
    frame = pd.DataFrame(
        {
            "dialogue_id": dialogue,
            # Utterance_ID is 1-based in EmoryNLP; we store 0-based positions like MELD.
            "utterance_index": (pd.to_numeric(raw["Utterance_ID"], errors="raise") - 1).astype("int32"),
            "speaker": raw["Speaker"].map(_emorynlp_speaker),
            "text": raw["Utterance"].map(_clean_text),
            "label": raw["Emotion"].str.strip(),
        }
    )
    return frame


_READERS = {"meld": _read_meld, "emorynlp": _read_emorynlp}


def _emorynlp_speaker(value: str) -> str:
    """"['Monica Geller']" -> "Monica Geller"; several speakers are joined with ' & '."""
    try:
        names = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value.strip()
    if isinstance(names, (list, tuple)):
        return " & ".join(str(n).strip() for n in names)
    return str(names).strip()


def _clean_text(value: str) -> str:
    # MELD's CSV carries mojibake for curly quotes and dashes (cp1252 read as utf-8).
    for bad, good in (("\u0092", "'"), ("\u0085", "..."), ("\u0097", "-"), ("\u0093", '"'), ("\u0094", '"')):
        value = value.replace(bad, good)
    return " ".join(value.split())


def _natural_key(column: pd.Series) -> pd.Series:
    if column.name == "dialogue_id":
        return column.str.extract(r"(\d+)$")[0].astype("int64")
    return column


def _require(raw: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise InputError(f"{source}: missing CSV columns {missing} (has: {list(raw.columns)})")
