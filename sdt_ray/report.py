"""Per-call report from predictions: a summary table, one timeline per call, and an index page.

OUTPUT/calls.parquet   one row per call: turns, negative shares, the longest negative run, the
                       emotions of the customer's last turns, and per speaker the share of each
                       emotion (`speakers`, a list of structs)
OUTPUT/timelines/*.png emotion per turn over time, one lane per speaker (the most negative calls first)
OUTPUT/calls/*.html    per drawn call: its timeline and every turn: time, speaker, emotion, the
                       words heard and how sure the recogniser was (low-confidence turns marked)
OUTPUT/index.html      every call in a table, sortable by any column (click a header, or open
                       index.html#sort=COLUMN), with where its words came from; links to the call pages

Turn times come from `start_s`/`end_s` when the predictions carry them (`predict --keep-columns
start_s,end_s`); otherwise turns are drawn one per unit. Rows with an error are counted, drawn
grey, and left out of the shares. The customer is the speaker given with `--customer`; else a
speaker named `customer` (`import calls --roles agent,customer`); else, in each call, the first
speaker other than the one who opens it (agents answer calls). The words and the recogniser's
confidence come from `text`, `words_from` and `asr_logprob` when the predictions carry them
(`predict --keep-columns start_s,end_s,text,words_from,asr_logprob`).
"""

from __future__ import annotations

import html
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from . import storage
from .errors import InputError

NEGATIVE = frozenset({"anger", "angry", "disgust", "fear", "sadness", "sad", "mad", "scared", "frustrated", "frustration"})
COLOURS = {  # emotion -> colour: negatives warm or dark, neutral grey
    "neutral": "#b0b0b0", "joy": "#f2c12e", "joyful": "#f2c12e", "happy": "#f2c12e", "surprise": "#f28e2b",
    "peaceful": "#8cd17d", "powerful": "#59a14f", "anger": "#d62728", "mad": "#d62728", "disgust": "#8c564b",
    "fear": "#9467bd", "scared": "#9467bd", "sadness": "#1f77b4", "sad": "#1f77b4",
}
OTHER_COLOURS = ["#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#aec7e8", "#ffbb78"]
NEEDED = ("dialogue_id", "utterance_index", "speaker", "label", "confidence", "error")
OPTIONAL = ("start_s", "end_s", "text", "words_from", "asr_logprob")  # kept from the utterances by predict --keep-columns
CUSTOMER_ROLE = "customer"


@dataclass(frozen=True)
class ReportOptions:
    customer: str | None = None  # the customer's speaker name in every call; None: per call, who answers
    negative: frozenset[str] = NEGATIVE  # emotion names counted as negative (case-insensitive)
    timelines: int = 100  # draw this many calls, the most negative first (0: none)
    last_turns: int = 3  # the customer's last turns whose emotions are listed
    low_confidence_logprob: float = -1.0  # a recognised turn whose mean log-probability is lower is marked

    def __post_init__(self) -> None:
        object.__setattr__(self, "negative", frozenset(self.negative) or NEGATIVE)  # none given: the defaults


@dataclass
class Report:
    calls: int
    turns: int
    drawn: int
    output: str

    def describe(self) -> str:
        return (f"wrote {self.output}: calls.parquet ({self.calls} calls, {self.turns} turns), "
                f"{self.drawn} timelines, index.html")


def build_report(predictions_uri: str, output_uri: str, options: ReportOptions = ReportOptions()) -> Report:
    frame, labels = read_predictions(predictions_uri)
    by_call = dict(tuple(frame.groupby("dialogue_id", sort=True)))
    calls = [call_summary(call, labels, options) for call in by_call.values()]
    summary = pd.DataFrame(calls).sort_values(["negative_share", "call_id"], ascending=[False, True], kind="stable")
    drawn = list(summary["call_id"].iloc[: options.timelines])
    with _Staging(output_uri) as folder:
        storage.write_table(_summary_table(summary, labels), os.path.join(folder, "calls.parquet"))
        os.makedirs(os.path.join(folder, "timelines"), exist_ok=True)
        for call_id in drawn:
            timeline_png(by_call[call_id], labels, options, os.path.join(folder, "timelines", _png_name(call_id)))
        os.makedirs(os.path.join(folder, "calls"), exist_ok=True)
        for call_id in drawn:
            with open(os.path.join(folder, "calls", _page_name(call_id)), "w", encoding="utf-8") as out:
                out.write(call_html(by_call[call_id], options))
        with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as out:
            out.write(index_html(summary, set(drawn), labels))
    return Report(len(summary), len(frame), len(drawn), output_uri)


def read_predictions(uri: str) -> tuple[pd.DataFrame, list[str]]:
    table = storage.read_table(uri)
    missing = [c for c in NEEDED if c not in table.column_names]
    if missing:
        raise InputError(f"{uri}: not a predictions table (no {missing}); give the output of `sdt-ray predict`")
    labels = [c[len("prob_"):] for c in table.column_names if c.startswith("prob_")]
    keep = [c for c in NEEDED + OPTIONAL if c in table.column_names]
    frame = table.select(keep).to_pandas().sort_values(["dialogue_id", "utterance_index"], kind="stable")
    return frame.reset_index(drop=True), labels


def call_summary(call: pd.DataFrame, labels: list[str], options: ReportOptions) -> dict:
    """One call's row of calls.parquet."""
    negative = {name.lower() for name in options.negative}
    scored = call[call["error"].isna()]
    is_negative = scored["label"].str.lower().isin(negative).to_numpy()
    customer = _customer(call, options)
    said_by_customer = scored[scored["speaker"] == customer]
    run, run_start = _longest_run(is_negative, scored)
    return {
        "call_id": call["dialogue_id"].iloc[0],
        "turns": len(call),
        "errors": int(call["error"].notna().sum()),
        "duration_s": float(call["end_s"].max()) if "end_s" in call and call["end_s"].notna().any() else None,
        "customer": customer,
        "negative_share": float(is_negative.mean()) if len(scored) else 0.0,
        "customer_negative_share": float(said_by_customer["label"].str.lower().isin(negative).mean()) if len(said_by_customer) else None,
        "longest_negative_run": run,
        "longest_negative_run_start_s": run_start,
        "last_customer_emotions": list(said_by_customer["label"].iloc[-options.last_turns:]),
        "speakers": [_speaker_shares(name, turns, labels, customer) for name, turns in scored.groupby("speaker", sort=False)],
        "words_from": _words_from(call),
        "low_confidence_turns": int(_low_confidence(call, options).sum()),
    }


def _customer(call: pd.DataFrame, options: ReportOptions) -> str | None:
    if options.customer:
        return options.customer
    return CUSTOMER_ROLE if (call["speaker"] == CUSTOMER_ROLE).any() else _answering_speaker(call)


def _words_from(call: pd.DataFrame) -> str:
    """transcript, asr, both (transcript+asr), or none (no words: energy turns, or not kept)."""
    if "words_from" not in call:
        return "none"
    sources = sorted(set(call["words_from"].dropna()))
    return "+".join(sources) if sources else "none"


def _low_confidence(call: pd.DataFrame, options: ReportOptions) -> np.ndarray:
    """(turns,) bool: recognised turns whose mean log-probability is under the threshold."""
    if "asr_logprob" not in call:
        return np.zeros(len(call), dtype=bool)
    return (call["asr_logprob"].astype(float) < options.low_confidence_logprob).to_numpy()


def _answering_speaker(call: pd.DataFrame) -> str | None:
    opener = call["speaker"].iloc[0]
    others = call.loc[call["speaker"] != opener, "speaker"]
    return others.iloc[0] if len(others) else None


def _longest_run(is_negative: np.ndarray, scored: pd.DataFrame) -> tuple[int, float | None]:
    """(length, start time) of the longest stretch of consecutive negative scored turns."""
    best, best_at, current = 0, None, 0
    for i, negative in enumerate(is_negative):
        current = current + 1 if negative else 0
        if current > best:
            best, best_at = current, i - current + 1
    if best_at is None or "start_s" not in scored:
        return best, None
    start = scored["start_s"].iloc[best_at]
    return best, None if pd.isna(start) else float(start)


def _speaker_shares(name: str, turns: pd.DataFrame, labels: list[str], customer: str | None) -> dict:
    counts = turns["label"].value_counts()
    return {"speaker": name, "role": "customer" if name == customer else "other", "turns": len(turns),
            **{f"share_{label}": float(counts.get(label, 0) / len(turns)) for label in labels}}


def _summary_table(summary: pd.DataFrame, labels: list[str]) -> pa.Table:
    speaker = pa.struct([("speaker", pa.string()), ("role", pa.string()), ("turns", pa.int32())]
                        + [(f"share_{label}", pa.float32()) for label in labels])
    schema = pa.schema([
        ("call_id", pa.string()), ("turns", pa.int32()), ("errors", pa.int32()), ("duration_s", pa.float64()),
        ("customer", pa.string()), ("negative_share", pa.float32()), ("customer_negative_share", pa.float32()),
        ("longest_negative_run", pa.int32()), ("longest_negative_run_start_s", pa.float64()),
        ("last_customer_emotions", pa.list_(pa.string())), ("speakers", pa.list_(speaker)),
        ("words_from", pa.string()), ("low_confidence_turns", pa.int32()),
    ])
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
               for row in summary.to_dict("records")]
    return pa.Table.from_pylist(records, schema=schema)


def colour(label: str, labels: list[str]) -> str:
    return COLOURS.get(label.lower(), OTHER_COLOURS[labels.index(label) % len(OTHER_COLOURS)] if label in labels else "#000000")


def timeline_png(call: pd.DataFrame, labels: list[str], options: ReportOptions, path: str) -> None:
    """Emotion per turn over time: one lane per speaker, a bar per turn coloured by emotion,
    its opacity the model's confidence; turns with an error are grey and hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    timed = "start_s" in call and call["start_s"].notna().all() and call["end_s"].notna().all()
    starts = call["start_s"].to_numpy(float) if timed else np.arange(len(call), dtype=float)
    ends = call["end_s"].to_numpy(float) if timed else starts + 0.85
    speakers = list(dict.fromkeys(call["speaker"]))
    customer = _customer(call, options)
    width = min(24.0, 8.0 + 0.08 * len(call))  # inches: long calls get wider, up to a screen
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.55 * len(speakers)), dpi=100)
    for start, end, speaker, label, confidence, error in zip(
        starts, ends, call["speaker"], call["label"], call["confidence"], call["error"]
    ):
        lane = speakers.index(speaker)
        if isinstance(error, str):
            ax.barh(lane, end - start, left=start, height=0.6, color="#dddddd", hatch="//", edgecolor="#999999")
        else:
            ax.barh(lane, end - start, left=start, height=0.6, color=colour(label, labels),
                    alpha=0.35 + 0.65 * float(confidence))
    ax.set_yticks(range(len(speakers)), [f"{s} (customer)" if s == customer else s for s in speakers])
    ax.invert_yaxis()
    ax.set_xlim(0 if timed else -0.5, float(ends.max()) + (0.5 if timed else 0.2))
    ax.set_xlabel("time in the call (s)" if timed else "turn")
    shown = [label for label in labels if label in set(call["label"].dropna())]
    handles = [Patch(color=colour(label, labels), label=label) for label in shown]
    if call["error"].notna().any():
        handles.append(Patch(facecolor="#dddddd", hatch="//", edgecolor="#999999", label="not scored"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    negative = call["label"].str.lower().isin({n.lower() for n in options.negative}).mean()
    ax.set_title(f"{call['dialogue_id'].iloc[0]}: {len(call)} turns, {negative:.0%} negative", fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def index_html(summary: pd.DataFrame, drawn: set[str], labels: list[str]) -> str:
    columns = [("call_id", "call"), ("turns", "turns"), ("duration_s", "duration (s)"), ("negative_share", "negative share"),
               ("customer_negative_share", "customer negative share"), ("longest_negative_run", "longest negative run"),
               ("last_customer_emotions", "customer's last turns"), ("errors", "errors"), ("words_from", "words from"),
               ("low_confidence_turns", "low-confidence turns")]
    text_columns = ("call_id", "last_customer_emotions", "words_from")
    head = "".join(f'<th data-key="{key}" data-numeric="{int(key not in text_columns)}">'
                   f"{html.escape(title)}</th>" for key, title in columns)
    rows = "\n".join(_html_row(row, columns, row["call_id"] in drawn) for row in summary.to_dict("records"))
    return INDEX_TEMPLATE.format(head=head, rows=rows, calls=len(summary))


def _html_row(row: dict, columns: list[tuple[str, str]], drawn: bool) -> str:
    cells = []
    for key, _ in columns:
        value = row[key]
        if key == "call_id":
            text = html.escape(str(value))
            link = f'<a href="calls/{html.escape(_page_name(value))}">{text}</a>' if drawn else text
            cells.append(f'<td data-value="{text}">{link}</td>')
        elif key == "last_customer_emotions":
            cells.append(f"<td>{html.escape(', '.join(value))}</td>")
        elif key == "words_from":
            cells.append(f"<td>{html.escape(str(value))}</td>")
        else:
            missing = value is None or (isinstance(value, float) and np.isnan(value))
            shown = "" if missing else (f"{value:.0%}" if "share" in key else f"{value:g}")
            cells.append(f'<td data-value="{"" if missing else value}">{shown}</td>')
    return f'<tr data-call="{html.escape(str(row["call_id"]))}">{"".join(cells)}</tr>'


def _png_name(call_id: str) -> str:
    return _safe(call_id) + ".png"


def _page_name(call_id: str) -> str:
    return _safe(call_id) + ".html"


def _safe(call_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)


def call_html(call: pd.DataFrame, options: ReportOptions) -> str:
    """One call's page: its timeline, then a row per turn with what was heard."""
    low = _low_confidence(call, options)
    rows = []
    for k, turn in enumerate(call.to_dict("records")):
        start = turn.get("start_s")
        when = "" if start is None or pd.isna(start) else f"{start:.1f}"
        logprob = turn.get("asr_logprob")
        sure = "" if logprob is None or pd.isna(logprob) else f"{logprob:.2f}" + (" (low)" if low[k] else "")
        emotion = turn["error"] if isinstance(turn["error"], str) else f"{turn['label']} ({turn['confidence']:.0%})"
        rows.append(f'<tr class="{"low" if low[k] else ""}"><td>{when}</td><td>{html.escape(str(turn["speaker"]))}</td>'
                    f"<td>{html.escape(emotion)}</td><td class=\"text\">{html.escape(str(turn.get('text') or ''))}</td>"
                    f"<td>{html.escape(str(turn.get('words_from') or 'none'))}</td><td>{sure}</td></tr>")
    call_id = str(call["dialogue_id"].iloc[0])
    return CALL_TEMPLATE.format(call=html.escape(call_id), png=html.escape(_png_name(call_id)), rows="\n".join(rows),
                                customer=html.escape(str(_customer(call, options))), low=int(low.sum()),
                                threshold=options.low_confidence_logprob)


class _Staging:
    """A local folder to write into: OUTPUT itself, or a temp folder uploaded to s3:// at the end."""

    def __init__(self, output_uri: str):
        self.output_uri = output_uri
        self.remote = storage.is_remote(output_uri)

    def __enter__(self) -> str:
        if self.remote:
            self.tmp = tempfile.TemporaryDirectory()
            return self.tmp.name
        os.makedirs(self.output_uri, exist_ok=True)
        return self.output_uri

    def __exit__(self, kind, value, traceback) -> None:
        if self.remote:
            if kind is None:
                storage.upload_dir(self.tmp.name, self.output_uri)
            self.tmp.cleanup()


INDEX_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdt-ray call report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
th {{ cursor: pointer; background: #f4f4f4; user-select: none; }}
td:first-child, th:first-child, td:nth-child(7) {{ text-align: left; }}
th.sorted-desc::after {{ content: " \\25BC"; }} th.sorted-asc::after {{ content: " \\25B2"; }}
</style></head>
<body>
<h1>Calls by negative emotion</h1>
<p>{calls} calls. Click a column to sort (again to reverse); the link on a call opens its timeline.</p>
<table id="calls"><thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
<script>
const table = document.getElementById("calls");
function sortBy(key, descending) {{
  const headers = [...table.tHead.rows[0].cells];
  const column = headers.findIndex(h => h.dataset.key === key);
  if (column < 0) return;
  const numeric = headers[column].dataset.numeric === "1";
  const value = row => {{
    const cell = row.cells[column];
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
    return numeric ? (raw === "" ? -Infinity : parseFloat(raw)) : raw;
  }};
  const rows = [...table.tBodies[0].rows];
  rows.sort((a, b) => (value(a) < value(b) ? -1 : value(a) > value(b) ? 1 : 0) * (descending ? -1 : 1));
  rows.forEach(row => table.tBodies[0].appendChild(row));
  headers.forEach(h => h.classList.remove("sorted-asc", "sorted-desc"));
  headers[column].classList.add(descending ? "sorted-desc" : "sorted-asc");
  table.dataset.sortedBy = key + (descending ? ":desc" : ":asc");
}}
table.tHead.addEventListener("click", event => {{
  const header = event.target.closest("th");
  if (!header) return;
  sortBy(header.dataset.key, !header.classList.contains("sorted-desc"));
}});
const wanted = new URLSearchParams(location.hash.slice(1));
if (wanted.get("sort")) sortBy(wanted.get("sort"), wanted.get("order") !== "asc");
else sortBy("negative_share", true);
</script>
</body></html>
"""


CALL_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{call}: sdt-ray call report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }}
tr.low td {{ background: #fff3cd; }}
td.text {{ max-width: 40em; }}
</style></head>
<body>
<p><a href="../index.html">all calls</a></p>
<h1>{call}</h1>
<p>Customer: {customer}. {low} turns heard with low confidence (mean log-probability under {threshold:g}) are shaded.</p>
<img src="../timelines/{png}" alt="emotion per turn over time" style="max-width: 100%">
<table id="turns"><thead><tr><th>start (s)</th><th>speaker</th><th>emotion</th><th>words</th><th>words from</th>
<th>recogniser log-probability</th></tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""
