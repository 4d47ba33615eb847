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
    """A YAML in jobs/ is a job spec when it names a command (the others are training recipes)."""
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


def _flag(key: str) -> str:
    return str(key).strip().lstrip("-").replace("_", "-")
