"""Every training recipe in jobs/recipes/ loads, and the parity recipes count sdt_spec §8's parameters."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdt_ray.cli import app
from sdt_ray.config import load_recipe
from sdt_ray.errors import ConfigError
from sdt_ray.jobspec import is_job_spec

JOBS = Path(__file__).resolve().parents[2] / "jobs"
RECIPES = sorted((JOBS / "recipes").glob("*.yaml"))  # job specs, in jobs/ itself: test_jobspecs.py


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.model.modalities and recipe.train.epochs > 0
    assert recipe.train.select_on == "dev"  # never select on test by default


@pytest.mark.parametrize(
    "name, total, trainable",
    [("iemocap.yaml", 79_669_272, 79_669_272), ("meld.yaml", 78_367_772, 68_930_588)],
)
def test_parity_parameter_counts(name, total, trainable):
    result = CliRunner().invoke(app, ["describe", str(JOBS / "recipes" / name), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["params_total"], info["params_trainable"]) == (total, trainable)
    assert info["transformer_blocks"] == 9 and info["hidden"] == 1024 and info["heads"] == 8


def test_bundled_demo_checkpoint_is_the_demo_model_recipe():
    """sdt_ray/demo/model is what `make demo-model` trains from jobs/recipes/demo_model.yaml."""
    from sdt_ray.checkpoint import load_checkpoint
    from sdt_ray.demo import DEMO_MODEL

    recipe = load_recipe(JOBS / "recipes" / "demo_model.yaml")
    loaded = load_checkpoint(DEMO_MODEL)
    assert loaded.config.modalities == recipe.model.modalities and loaded.config.input_dims == recipe.model.input_dims
    assert (loaded.config.hidden, loaded.config.heads) == (recipe.model.hidden, recipe.model.heads)
    assert loaded.meta["recipe"]["name"] == "demo-model" and loaded.meta["recipe"]["train"]["select_on"] == "dev"
    assert (DEMO_MODEL / "model.safetensors").stat().st_size < 5 * 1024**2


def test_bundled_call_checkpoint_is_the_text_audio_recipe():
    """sdt_ray/demo/model_text_audio is seed 0 of `make meld-text-audio` (jobs/recipes/meld_text_audio.yaml)."""
    from sdt_ray.checkpoint import load_checkpoint
    from sdt_ray.demo import DEMO_CALLS_MODEL

    recipe = load_recipe(JOBS / "recipes" / "meld_text_audio.yaml")
    loaded = load_checkpoint(DEMO_CALLS_MODEL)
    assert loaded.config.modalities == ("text", "audio") == recipe.model.modalities
    assert loaded.config.input_dims == recipe.model.input_dims == (384, 88)
    assert loaded.meta["recipe"]["name"] == "meld-text-audio" and loaded.meta["recipe"]["train"]["select_on"] == "dev"
    assert loaded.meta["recipe"]["train"]["modality_dropout"] == recipe.train.modality_dropout == 0.3



def test_iemocap_class_weights_are_inverse_train_frequencies():
    """The reference weighs CE by 1/frequency; the recipe once held the frequencies themselves,
    which favours the frequent classes it should discount."""
    train_counts = {"hap": 504, "sad": 839, "neu": 1324, "ang": 933, "exc": 742, "fru": 1468}
    recipe = load_recipe(JOBS / "recipes" / "iemocap.yaml")
    total = sum(train_counts.values())  # 5,810 utterances in sessions 1-4
    expected = [total / train_counts[name] for name in recipe.model.class_names]
    assert recipe.loss.class_weights == pytest.approx(expected, rel=1e-5)
    assert max(recipe.loss.class_weights) == recipe.loss.class_weights[0]  # hap is the rarest


def test_the_distillation_temperature_is_defined_once(tmp_path):
    assert load_recipe(JOBS / "recipes" / "meld.yaml").model.temperature == 8.0  # the paper's MELD T
    assert not hasattr(load_recipe(JOBS / "recipes" / "meld.yaml").loss, "temperature")
    older = tmp_path / "older.yaml"  # a recipe from before, with the copy under loss
    older.write_text("model: {temperature: 8.0}\nloss: {temperature: 8.0, gamma_kl: 1.0}\n")
    assert load_recipe(older).model.temperature == 8.0
    only_loss = tmp_path / "only_loss.yaml"
    only_loss.write_text("loss: {temperature: 4.0}\n")
    assert load_recipe(only_loss).model.temperature == 4.0
    differ = tmp_path / "differ.yaml"
    differ.write_text("model: {temperature: 8.0}\nloss: {temperature: 1.0}\n")
    with pytest.raises(ConfigError, match=r"model.temperature is 8.0 but loss.temperature is 1.0"):
        load_recipe(differ)


def test_the_folder_tells_recipes_from_job_specs():
    assert RECIPES and not any(is_job_spec(p) for p in RECIPES)
    specs = sorted(JOBS.glob("*.yaml"))
    assert specs and all(is_job_spec(p) for p in specs)


def test_recipe_numbers_in_yaml_1_1_exponent_form_load_as_floats(tmp_path):
    """PyYAML reads `1e-5` (no dot) as a string; it used to reach torch.optim inside a Ray worker."""
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  dropout: 3e-1\nloss:\n  class_weights: [1, 5e-1]\ntrain:\n  lr: 5e-4\n  weight_decay: 1e-5\n")
    recipe = load_recipe(path)
    assert (recipe.train.lr, recipe.train.weight_decay, recipe.model.dropout) == (5e-4, 1e-5, 0.3)
    assert isinstance(recipe.train.weight_decay, float)
    assert recipe.loss.class_weights == (1.0, 0.5) and all(isinstance(w, float) for w in recipe.loss.class_weights)


@pytest.mark.parametrize("body, named", [("train:\n  lr: fast\n", "TrainConfig.lr: 'fast' is not a number"),
                                         ("train:\n  epochs: 2.5\n", "TrainConfig.epochs: 2.5 is not a whole number"),
                                         ("loss:\n  class_weights: [1, x]\n", r"LossConfig.class_weights\[1\]: 'x' is not a number"),
                                         ("train:\n  calibrate_by: mse\n", r"calibrate_by 'mse': choose from \['ece', 'nll'\]")])
def test_recipe_value_of_the_wrong_type_is_one_error_line(tmp_path, body, named):
    path = tmp_path / "r.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=named) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: ")
