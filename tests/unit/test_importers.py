"""MELD and EmoryNLP CSVs to the utterances table."""

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sdt_ray.errors import InputError
from sdt_ray.importers import DEMO_CORPUS, DEMO_MEDIA, EMORYNLP_LABELS, MELD_LABELS, import_corpus, write_corpus, write_manifest
from sdt_ray.schema import UTTERANCES_SCHEMA, labels_from_metadata

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_meld_slice():
    table = import_corpus("meld", DEMO_CORPUS)
    assert table.schema.remove_metadata() == UTTERANCES_SCHEMA
    assert labels_from_metadata(table.schema) == MELD_LABELS
    per_split = {r["split"]: r["dialogue_id_count_distinct"] for r in table.group_by("split").aggregate([("dialogue_id", "count_distinct")]).to_pylist()}
    assert per_split == {"train": 160, "dev": 30, "test": 40}
    first = table.slice(0, 2).to_pylist()
    assert first[0]["dialogue_id"] == "meld_train_0" and first[0]["utterance_index"] == 0
    assert first[0]["speaker"] == "Chandler" and first[0]["label"] == "neutral"
    assert first[1]["speaker"] == "The Interviewer"
    assert "\u0092" not in "".join(table.column("text").to_pylist())  # cp1252 mojibake cleaned


def test_meld_dialogue_ids_never_collide_across_splits():
    table = import_corpus("meld", DEMO_CORPUS)
    # Dialogue_ID restarts at 0 in each MELD file, so the split is part of the id.
    assert table.group_by(["dialogue_id", "split"]).aggregate([]).num_rows == table.group_by("dialogue_id").aggregate([]).num_rows
    assert {"meld_train_0", "meld_dev_0", "meld_test_0"} <= set(table.column("dialogue_id").to_pylist())


def test_limit_dialogues_keeps_first_n_per_split():
    table = import_corpus("meld", DEMO_CORPUS, limit_dialogues=2)
    assert table.group_by("dialogue_id").aggregate([]).num_rows == 6


def write_emorynlp(folder: Path, rows: dict[str, str]) -> None:
    header = "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode,Start_Time,End_Time\n"
    for split, body in rows.items():
        (folder / f"emorynlp_{split}_final.csv").write_text(header + body)


def test_emorynlp_dialogues_and_list_speakers(tmp_path):
    write_emorynlp(tmp_path, {
        "train": (
            "Hi there.,['Monica Geller'],Joyful,1,1,1,2,00:00:02.877,00:00:07.548\n"
            "\"Yeah, right!\",\"['Joey Tribbiani', 'Chandler Bing']\",Neutral,1,2,1,2,00:00:04.504,00:00:07.548\n"
            "Bye.,['Ross Geller'],Sad,2,1,1,2,00:01:00.000,00:01:02.000\n"
        ),
        "dev": "Ok.,['Rachel Green'],Mad,1,1,3,4,00:00:01.000,00:00:02.000\n",
        "test": "Fine.,['Phoebe Buffay'],Scared,1,1,5,6,00:00:01.000,00:00:02.000\n",
    })
    table = import_corpus("emorynlp", tmp_path)
    assert labels_from_metadata(table.schema) == EMORYNLP_LABELS
    train = table.filter(pc.equal(table.column("split"), "train")).to_pylist()
    assert [r["dialogue_id"] for r in train] == ["emorynlp_s1_e2_c1", "emorynlp_s1_e2_c1", "emorynlp_s1_e2_c2"]
    assert [r["utterance_index"] for r in train] == [0, 1, 0]
    assert train[1]["speaker"] == "Joey Tribbiani & Chandler Bing"
    assert train[1]["text"] == "Yeah, right!"


def test_unknown_emorynlp_label_is_an_error(tmp_path):
    write_emorynlp(tmp_path, {s: "Hi.,['A'],Ecstatic,1,1,1,1,0,1\n" for s in ("train", "dev", "test")})
    with pytest.raises(InputError, match=r"unknown emorynlp labels \['Ecstatic'\]"):
        import_corpus("emorynlp", tmp_path)


def test_missing_file_names_the_folder(tmp_path):
    with pytest.raises(InputError, match="train_sent_emo.csv: not found"):
        import_corpus("meld", tmp_path)


@pytest.mark.skipif(not (SHARED / "emorynlp").exists(), reason="shared EmoryNLP data not present")
def test_real_emorynlp_counts():
    table = import_corpus("emorynlp", SHARED / "emorynlp")
    counts = {r["split"]: r["count_all"] for r in table.group_by("split").aggregate([([], "count_all")]).to_pylist()}
    assert counts == {"train": 7551, "dev": 954, "test": 984}


def test_manifest_media_paths_become_absolute(tmp_path):
    from sdt_ray.importers import import_manifest

    (tmp_path / "calls").mkdir()
    (tmp_path / "m.csv").write_text(
        "dialogue_id,utterance_index,speaker,text,label,split,audio_uri,start_s,end_s,channel\n"
        "call1,0,agent,hello,neutral,,calls/c1.wav,0.0,1.5,0\n"
        "call1,1,caller,,,,s3://bucket/c1.wav,1.5,3.0,1\n"
    )
    table = import_manifest(tmp_path / "m.csv")
    assert table.column("audio_uri").to_pylist() == [str(tmp_path / "calls" / "c1.wav"), "s3://bucket/c1.wav"]
    assert table.column("channel").to_pylist() == [0, 1]
    assert table.column("end_s").to_pylist() == [1.5, 3.0]
    assert table.column("text").to_pylist() == ["hello", None] and table.column("video_uri").null_count == 2


def test_demo_media_manifest_lists_existing_clips():
    from pathlib import Path

    from sdt_ray.importers import DEMO_MEDIA, import_manifest

    table = import_manifest(DEMO_MEDIA)
    assert table.num_rows == 57 and table.column("dialogue_id").unique().to_pylist()[:2] == ["meld_dev_2", "meld_dev_9"]
    assert all(Path(p).is_file() for p in table.column("video_uri").to_pylist())


def test_written_tables_say_what_they_hold(tmp_path):
    out = tmp_path / "meld.parquet"
    written = write_corpus("meld", DEMO_CORPUS, str(out), limit_dialogues=2)
    assert pq.read_table(out).num_rows == written.table.num_rows
    counts = {s: written.table.filter(pc.equal(written.table.column("split"), s)).num_rows for s in ("train", "dev", "test")}
    assert written.describe() == (f"wrote {out}: train {counts['train']} utterances / 2 dialogues, "
                                  f"dev {counts['dev']} utterances / 2 dialogues, test {counts['test']} utterances / 2 dialogues")
    manifest = write_manifest(DEMO_MEDIA, str(tmp_path / "media.parquet"))
    assert manifest.describe() == f"wrote {tmp_path / 'media.parquet'}: 57 utterances in 8 dialogues"
