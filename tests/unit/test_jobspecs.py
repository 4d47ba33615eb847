"""Job specs in jobs/: each loads through our loader and turns into a command line the CLI
accepts (checked against the CLI's own flags, nothing run)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdt_ray.cli import app
from sdt_ray.jobspec import Flag, JobSpec, argv, load_job

JOBS = Path(__file__).resolve().parents[2] / "jobs"
SPECS = sorted(JOBS.glob("*.yaml"))  # recipes live in jobs/recipes/


def dry_run(*args):
    return CliRunner().invoke(app, ["run", *map(str, args), "--dry-run"])


def test_one_spec_per_stage():
    assert {load_job(p).command for p in SPECS} >= {"import meld", "extract", "train", "predict", "evaluate"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_makes_a_valid_command_line(path):
    result = dry_run(path)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("sdt-ray " + load_job(path).command)
    assert "password" not in path.read_text().lower() and "secret" not in path.read_text().lower()


def test_set_overrides_and_address_is_passed_on():
    result = CliRunner().invoke(app, [
        "run", str(JOBS / "meld_predict.yaml"), "--set", "output=s3://bucket/predictions", "--set", "overwrite=true",
        "--address", "http://127.0.0.1:8265", "--dry-run",
    ])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert "--output s3://bucket/predictions" in line and "--overwrite" in line
    assert "--keep-columns split" in line and line.endswith("--address http://127.0.0.1:8265")


def test_unknown_option_names_the_allowed_ones(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("command: predict\noptions:\n  checkpont: x\n")
    result = dry_run(spec)
    assert result.exit_code == 2
    assert "no option ['checkpont']" in result.output and "checkpoint" in result.output


def test_unknown_command_and_keys_are_refused(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("command: fly\n")
    assert "unknown command 'fly'" in dry_run(spec).output
    spec.write_text("command: predict\nopts: {}\n")
    assert "unknown top-level keys ['opts']" in dry_run(spec).output


def test_switches_lists_and_positional_arguments():
    allowed = {"overwrite": Flag(switch=True, negatable=True), "extract": Flag(switch=True), "keep-columns": Flag()}
    spec = JobSpec("predict", {"overwrite": False, "extract": False, "keep-columns": ["a", "b"]}, ("x",))
    assert argv(spec, allowed) == ["predict", "x", "--no-overwrite", "--keep-columns", "a,b"]
    with pytest.raises(Exception, match="is a switch"):
        argv(JobSpec("predict", {"extract": "yes"}), allowed)


def test_a_failing_command_fails_the_run(tmp_path):
    spec = tmp_path / "evaluate.yaml"
    spec.write_text(f"command: evaluate\noptions:\n  checkpoint: {tmp_path / 'missing'}\n"
                    f"  features: {tmp_path / 'features.parquet'}\n  output: {tmp_path / 'eval'}\n")
    result = CliRunner().invoke(app, ["run", str(spec)])
    assert result.exit_code == 2  # the command's own status, not 0
    assert "not a checkpoint" in result.output


def test_import_runs_here_only():
    result = dry_run(JOBS / "meld_import.yaml", "--cluster", "cluster/gpu.yaml")
    assert result.exit_code == 2 and "runs on this machine only" in result.output
