"""Job specs: one YAML file per stage (`jobs/*_extract.yaml`, `*_train.yaml`, ...), run by
`sdt-ray run SPEC` locally or on a cluster with the same file.

    command: predict            # any sdt-ray command, e.g. extract, train, predict, "import meld"
    description: ...            # optional, for people
    args: []                    # positional arguments, for the commands that take them (import)
    options:                    # the command's flags, without dashes (- or _ alike)
      checkpoint: s3://bucket/runs/meld/best
      input: s3://bucket/features/meld
      keep-columns: [split]     # lists become comma-separated values
      overwrite: true           # booleans become --flag / --no-flag

A spec holds no Python and no credentials; `--set key=value` on the command line overrides an
option (e.g. a bucket per environment). The flags a command accepts come from the CLI itself,
so an unknown key is an error naming the ones allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from .errors import ConfigError

SPEC_KEYS = {"command", "description", "args", "options"}


@dataclass(frozen=True)
class JobSpec:
    command: str  # e.g. "predict", or "import meld"
    options: dict[str, Any] = field(default_factory=dict)  # flag name (dashes) -> value
    args: tuple[str, ...] = ()  # positional arguments
    description: str = ""
    source: str = ""


def is_job_spec(path: str | Path) -> bool:
    """A YAML is a job spec when it names a command (recipes, in jobs/recipes/, do not)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    return isinstance(data, dict) and "command" in data


def load_job(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read job spec ({exc})") from None
    if not isinstance(data, dict) or "command" not in data:
        raise ConfigError(f"{path}: a job spec needs a 'command' (e.g. command: predict)")
    extra = set(data) - SPEC_KEYS
    if extra:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(extra)} (allowed: {sorted(SPEC_KEYS)})")
    options = {_flag(k): v for k, v in (data.get("options") or {}).items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        options[_flag(key)] = yaml.safe_load(value)  # `true`, `3`, `[a, b]` read as YAML does
    args = tuple(str(a) for a in data.get("args") or ())
    return JobSpec(str(data["command"]).strip(), options, args, str(data.get("description", "")), str(path))


@dataclass(frozen=True)
class Flag:
    switch: bool = False  # a boolean flag: --name
    negatable: bool = False  # it also has --no-name


def argv(spec: JobSpec, allowed: dict[str, Flag]) -> list[str]:
    """The command line for `spec`, given the flags its command takes (from the CLI itself).
    Unknown flags are refused, naming the allowed ones."""
    unknown = sorted(k for k in spec.options if k not in allowed)
    if unknown:
        raise ConfigError(
            f"{spec.source}: `{spec.command}` has no option {unknown}; it takes: {', '.join(sorted(allowed))}"
        )
    args = spec.command.split() + list(spec.args)
    for name, value in spec.options.items():
        flag = allowed[name]
        if flag.switch:
            if not isinstance(value, bool):
                raise ConfigError(f"{spec.source}: option {name} is a switch: use true or false (got {value!r})")
            if value or flag.negatable:
                args.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None:
            args += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return args


def command_flags(root: click.Command, command: str) -> dict[str, Flag]:
    """The flags `command` (e.g. "predict", "import meld") takes, read from the CLI's own
    declarations (`root` is the sdt-ray command group); `run` cannot run itself."""
    node = root
    for word in command.split():
        commands = getattr(node, "commands", {})
        if word not in commands or word == "run":
            raise ConfigError(f"unknown command {command!r}; choose from {sorted(c for c in commands if c != 'run')}")
        node = commands[word]
    options = [p for p in node.params if p.param_type_name == "option" and p.name != "help"]
    return {o.opts[0].lstrip("-"): Flag(switch=o.is_flag, negatable=bool(o.secondary_opts)) for o in options}


@dataclass(frozen=True)
class RunRequest:
    """`sdt-ray run SPEC [--set k=v ...] [--address A | --cluster FILE] [--no-wait] [--dry-run]`."""

    spec: str | Path
    overrides: tuple[str, ...] = ()
    address: str | None = None
    cluster: str | None = None
    no_wait: bool = False
    dry_run: bool = False


def run_argv(spec: JobSpec, root: click.Command, address: str | None, cluster: str | None, no_wait: bool) -> list[str]:
    """The command line a job spec makes, with where it runs."""
    flags = command_flags(root, spec.command)
    if (address or cluster or no_wait) and "cluster" not in flags:
        raise ConfigError(f"`{spec.command}` runs on this machine only (it takes no --cluster or --address)")
    args = argv(spec, flags)
    args += ["--address", address] if address else []
    args += ["--cluster", cluster] if cluster else []
    return args + (["--no-wait"] if no_wait else [])


def run_spec(root: click.Command, request: RunRequest, log=print) -> int:
    """Print the spec's command line and, unless a dry run, run it in this process (`root` is
    the sdt-ray command group); the exit status is the command's."""
    args = run_argv(load_job(request.spec, list(request.overrides)), root, request.address, request.cluster, request.no_wait)
    log("sdt-ray " + " ".join(args))
    if request.dry_run:
        return 0
    # Outside standalone mode click hands back the command's return value (an exit status when
    # the command raised typer.Exit) instead of exiting with it.
    status = root.main(args=args, prog_name="sdt-ray", standalone_mode=False)
    return status if isinstance(status, int) else 0


def context_argv(ctx: click.Context, drop: set[str]) -> list[str]:
    """The command line of a parsed invocation, rebuilt from its values (options left at their
    default, and the parameters in `drop`, omitted): how a command resends itself to a cluster."""
    args = ctx.command_path.split()[1:]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None or (param.param_type_name == "option" and value == param.default):
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif param.is_flag:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


def _flag(key: str) -> str:
    return str(key).strip().lstrip("-").replace("_", "-")
