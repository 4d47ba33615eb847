"""Small synthetic feature files in the authors' pickle layouts (sdt_spec §9)."""

import pickle

import numpy as np

from sdt_ray.sdt_pickle import LAYOUTS

DIMS = (12, 10, 6)  # text, audio, visual: small stand-ins for 1024 / 1582 / 342


def synthetic_items(dataset: str, train: int = 20, test: int = 5, seed: int = 0, order=None) -> tuple:
    """A 12- or 13-tuple like the authors' file; labels drawn with the published train shares."""
    layout = LAYOUTS[dataset]
    rng = np.random.default_rng(seed)
    shares = np.array(layout.train_counts, float) / sum(layout.train_counts)
    ids = [f"d{i:03d}" for i in range(train + test)]
    speakers, labels, text, audio, visual, sentences = {}, {}, {}, {}, {}, {}
    for d in ids:
        n = int(rng.integers(6, 12))
        labels[d] = [int(x) for x in rng.choice(len(shares), size=n, p=shares)]
        if order is not None:
            labels[d] = [order[x] for x in labels[d]]
        if dataset == "iemocap":
            speakers[d] = [["M", "F"][int(x)] for x in rng.integers(0, 2, n)]
        else:
            speakers[d] = [list(np.eye(9)[int(x)]) for x in rng.integers(0, 9, n)]
        text[d], audio[d], visual[d] = (rng.normal(size=(n, k)).astype(np.float32) for k in DIMS)
        sentences[d] = [f"utterance {u}" for u in range(n)]
    roberta = {d: text[d] for d in ids}
    items = (ids, speakers, labels, text, roberta, roberta, roberta, audio, visual, sentences, set(ids[:train]), set(ids[train:]))
    return items + (None,) if dataset == "meld" else items


def write_pickle(path, items) -> str:
    with open(path, "wb") as handle:
        pickle.dump(items, handle, protocol=2)
    return str(path)
