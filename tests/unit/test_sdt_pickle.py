"""`import sdt-pickle`: small synthetic feature files in both layouts of sdt_spec §9, read by
the restricted unpickler; a pickle that reaches for any other global is refused unrun."""

import os

import numpy as np
import pyarrow.compute as pc
import pytest

from sdt_ray.errors import InputError
from sdt_ray.sdt_pickle import DEV_METADATA_KEY, IEMOCAP_LABELS, import_sdt_pickle, load_restricted
from sdt_ray.importers import MELD_LABELS
from tests.helpers.sdt_pickle_files import synthetic_items, write_pickle

@pytest.mark.parametrize("dataset,labels,speakers", [("iemocap", IEMOCAP_LABELS, {"M", "F"}), ("meld", MELD_LABELS, {f"speaker{k}" for k in range(9)})])
def test_both_layouts_become_a_features_table(tmp_path, dataset, labels, speakers):
    items = synthetic_items(dataset, train=40)
    path = write_pickle(tmp_path / "features.pkl", items)
    result = import_sdt_pickle(path, dataset)
    table = result.table
    assert table.num_rows == sum(len(v) for v in items[2].values())
    assert result.dims == {"text": 12, "audio": 10, "visual": 6}
    assert result.split_dialogues == {"train": 36, "dev": 4, "test": 5}  # 10 % of trainVid carved by dialogue
    first = table.filter(pc.equal(table.column("dialogue_id"), "d000"))
    np.testing.assert_allclose(np.array(first.column("text_features").to_pylist()), items[3]["d000"], rtol=0, atol=0)
    assert first.column("label").to_pylist() == [labels[x] for x in items[2]["d000"]]
    assert set(table.column("speaker").to_pylist()) <= speakers
    # MELD one-hot speaker slots become the slot's name: utterance 0 of d000.
    if dataset == "meld":
        assert first.column("speaker")[0].as_py() == f"speaker{int(np.argmax(items[1]['d000'][0]))}"
    assert b"trainVid" in table.schema.metadata[DEV_METADATA_KEY]


def test_the_dev_carve_is_seeded_and_whole_dialogues(tmp_path):
    path = write_pickle(tmp_path / "f.pkl", synthetic_items("iemocap", train=50))
    one, same, other = (import_sdt_pickle(path, "iemocap", seed=s).table for s in (0, 0, 1))

    def dev_dialogues(t):
        return {d for d, s in zip(t.column("dialogue_id").to_pylist(), t.column("split").to_pylist()) if s == "dev"}

    assert dev_dialogues(one) == dev_dialogues(same) != dev_dialogues(other)
    assert len(dev_dialogues(one)) == 5


def test_a_permuted_label_order_is_refused(tmp_path):
    swap = {0: 2, 2: 0, 1: 1, 3: 3, 4: 4, 5: 5}  # hap and neu exchanged
    path = write_pickle(tmp_path / "f.pkl", synthetic_items("iemocap", train=80, order=swap))
    with pytest.raises(InputError, match=r"do not follow hap,sad,neu,ang,exc,fru: train counts by id .* fit the order \w+,\w+,hap,"):
        import_sdt_pickle(path, "iemocap")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sdt-pickle-pwned",))


def test_a_pickle_reaching_for_a_global_is_refused_unrun(tmp_path):
    marker = "/tmp/sdt-pickle-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    items = list(synthetic_items("iemocap"))
    items[9] = Exploit()
    path = write_pickle(tmp_path / "evil.pkl", tuple(items))
    with pytest.raises(InputError, match=r"refused to load the global (posix|os)\.system"):
        import_sdt_pickle(path, "iemocap")
    assert not os.path.exists(marker)


def test_wrong_shapes_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="is a 12-tuple"):
        import_sdt_pickle(write_pickle(tmp_path / "a.pkl", (1, 2, 3)), "iemocap")
    with pytest.raises(InputError, match="not a readable pickle"):
        load_restricted(b"not a pickle", "x.pkl")
    items = list(synthetic_items("iemocap"))
    items[7] = {d: v[:, :5] if d == "d001" else v for d, v in items[7].items()}
    with pytest.raises(InputError, match="audio features of several sizes"):
        import_sdt_pickle(write_pickle(tmp_path / "b.pkl", tuple(items)), "iemocap")
    with pytest.raises(InputError, match="not found"):
        import_sdt_pickle(str(tmp_path / "missing.pkl"), "iemocap")


def test_dialogues_outside_the_split_lists_are_reported_and_overlaps_refused(tmp_path):
    items = list(synthetic_items("iemocap", train=20, test=5))
    items[10] = set(items[0][:18])  # two train dialogues in neither list
    result = import_sdt_pickle(write_pickle(tmp_path / "a.pkl", tuple(items)), "iemocap")
    assert result.left_out == ["d018", "d019"] and "left out: 2 dialogues" in result.describe()
    assert not {"d018", "d019"} & set(result.table.column("dialogue_id").to_pylist())
    items[11] = set(items[0][17:])  # d017 in both lists
    with pytest.raises(InputError, match="1 dialogues are in both trainVid and testVid"):
        import_sdt_pickle(write_pickle(tmp_path / "b.pkl", tuple(items)), "iemocap")



def test_a_malformed_file_is_one_line_naming_what_is_wrong(tmp_path):
    """A trainVid id with no data, or a label that is not a number, once gave a raw traceback."""
    items = list(synthetic_items("iemocap"))
    items[10] = set(items[10]) | {"ghost"}  # listed for training, no data anywhere
    path = write_pickle(tmp_path / "ghost.pkl", tuple(items))
    with pytest.raises(InputError, match=f"{path}: videoLabels has no entry for dialogue 'ghost'"):
        import_sdt_pickle(path, "iemocap")
    items = list(synthetic_items("iemocap"))
    items[2] = {**items[2], "d003": ["happy"] * len(items[2]["d003"])}
    path = write_pickle(tmp_path / "words.pkl", tuple(items))
    with pytest.raises(InputError, match=f"{path}: videoLabels: dialogue 'd003' has the label 'happy', not a class id"):
        import_sdt_pickle(path, "iemocap")
    items = list(synthetic_items("iemocap"))
    items[1] = None  # videoSpeakers is not a mapping at all
    path = write_pickle(tmp_path / "none.pkl", tuple(items))
    with pytest.raises(InputError, match="videoSpeakers has no entry for dialogue"):
        import_sdt_pickle(path, "iemocap")
