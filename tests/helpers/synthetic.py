"""Small, learnable features tables for tests: each utterance's vector is its
class centroid plus noise, so a model can reach high accuracy in a few epochs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sdt_ray.schema import FEATURE_ERRORS_FIELD, features_schema, vector_array

LABELS = ["neutral", "joy", "anger"]


def features_table(
    n_dialogues: dict[str, int] | None = None,
    dims: dict[str, int] | None = None,
    utterances: tuple[int, int] = (2, 7),
    seed: int = 0,
    noise: float = 0.5,
) -> pa.Table:
    n_dialogues = n_dialogues or {"train": 24, "dev": 6, "test": 6}
    dims = dims or {"text": 16}
    rng = np.random.default_rng(seed)
    centroids = {m: rng.normal(size=(len(LABELS), d)) for m, d in dims.items()}
    rows: dict[str, list] = {k: [] for k in ("dialogue_id", "utterance_index", "speaker", "label", "split")}
    label_ids = []
    for split, count in n_dialogues.items():
        for d in range(count):
            n = int(rng.integers(*utterances))
            for u in range(n):
                y = int(rng.integers(len(LABELS)))
                rows["dialogue_id"].append(f"{split}_{d:03d}")
                rows["utterance_index"].append(u)
                rows["speaker"].append(["Ann", "Bob", "Cy"][int(rng.integers(3))])
                rows["label"].append(LABELS[y])
                rows["split"].append(split)
                label_ids.append(y)
    y = np.array(label_ids)
    columns = dict(rows)
    for m, d in dims.items():
        columns[f"{m}_features"] = vector_array(centroids[m][y] + noise * rng.normal(size=(len(y), d)))
    columns["errors"] = pa.array([[] for _ in y], FEATURE_ERRORS_FIELD.type)
    return pa.Table.from_pydict(columns, schema=features_schema(dims, LABELS))


def with_values(table: pa.Table, column: str, values: list) -> pa.Table:
    """`table` with `column` replaced by `values`, keeping the column's type."""
    field = table.schema.field(column)
    return table.set_column(table.column_names.index(column), field, pa.array(values, field.type))


def corrupt_column(path: str, row_group: int, column: str) -> None:
    """Overwrite one column chunk of one row group with garbage, footer intact: reading that
    chunk fails ("Couldn't deserialize thrift"), every other chunk still reads."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    group = meta.row_group(row_group)
    chunk = next(group.column(c) for c in range(group.num_columns) if group.column(c).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xab" * chunk.total_compressed_size)
