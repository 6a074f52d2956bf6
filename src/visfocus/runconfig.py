"""The configuration of one evaluation run (``visfocus eval``, a sweep's trial, ``evaluate`` in Python), declared once:
its fields, their types and limits, and the YAML ``--config`` file that carries the same keys. Every value is typed
by the project's parsers (``visfocus.values``) whether it came from a flag, YAML or Python, so ``"false"`` is false
and ``limit: true`` is an error, and the folder a run lives in follows from it (``run_dir``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from visfocus.benchmarks.base import SCORERS
from visfocus.errors import VisfocusError
from visfocus.interventions import typed_method_args
from visfocus.models.loading import parse_model_args
from visfocus.values import (
    FALSE_WORDS,
    TRUE_WORDS,
    parse_bool,
    parse_int,
    parse_key_values,
    parse_names,
    parse_text,
)

TRACE_MODES = ("heads", "mean")
BASELINE_NAMES = ("baseline", "none")  # --method values that mean no method


@dataclass
class RunConfig:
    model: str | None = None  # Hub id or local path; None = the built-in model organism
    model_args: dict[str, Any] = field(default_factory=dict)  # dtype, device, revision, trust_remote_code, ...
    tasks: list[str] = field(default_factory=lambda: ["scenes_test"])
    method: str | None = None
    method_args: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    limit: int | None = None
    offset: int = 0
    seed: int = 0
    batch_size: int = 1
    max_new_tokens: int = 8
    prompt_style: str | None = None
    scorer: str = "exact"
    output_path: str = "runs"
    log_samples: bool = False  # also store the full chat prompt of every sample
    skip_missing: bool = False
    trace: str | None = None  # "heads" or "mean": write traces_<task>/ (see visfocus.tracefile)
    prefix_sharing: bool = True  # answer one image's samples from one prefill of its prefix (same answers, faster)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "the run configuration") -> RunConfig:
        """A validated configuration from ``{field: value}`` (flags, a YAML file); an unknown key is one error."""
        unknown = sorted(str(key) for key in values if key not in FIELDS)
        if unknown:
            raise VisfocusError(f"{source}: unknown keys {unknown}; allowed: {', '.join(FIELDS)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Type every field in place (``"8"`` → 8, ``"false"`` → False, a method's arguments by its parameter types,
        the model's by ``parse_model_args``) and check its limits; one error for the first bad one."""
        self.model = _optional_text(self.model, "--model")
        given = parse_key_values(self.model_args, "model argument")
        typed = parse_model_args(given)
        self.model_args = {key: typed[key] for key in given}
        self.tasks = parse_names(self.tasks, "--tasks")
        if not self.tasks:
            raise VisfocusError("no task given; `visfocus list tasks` shows them")
        self.method = _optional_text(self.method, "--method")
        if self.method is not None and self.method.strip().lower() in BASELINE_NAMES:
            self.method = None
        if self.method is None:
            if parse_key_values(self.method_args, "method argument"):
                raise VisfocusError("--method_args given without --method")
            self.method_args = {}
        else:
            self.method_args = typed_method_args(self.method, self.method_args)
        self.data_root = _optional_text(self.data_root, "--data_root")
        self.limit = None if self.limit is None else parse_int(self.limit, "--limit", low=1)
        self.offset = parse_int(self.offset, "--offset", low=0)
        self.seed = parse_int(self.seed, "--seed", low=0)
        self.batch_size = parse_int(self.batch_size, "--batch_size", low=1)
        self.max_new_tokens = parse_int(self.max_new_tokens, "--max_new_tokens", low=1)
        self.prompt_style = _optional_text(self.prompt_style, "--prompt_style")
        self.scorer = parse_text(self.scorer, "--scorer", choices=SCORERS)
        self.output_path = parse_text(self.output_path, "--output_path")
        self.log_samples = parse_bool(self.log_samples, "--log_samples")
        self.skip_missing = parse_bool(self.skip_missing, "--skip_missing")
        self.trace = parse_trace(self.trace)
        self.prefix_sharing = parse_bool(self.prefix_sharing, "prefix_sharing")


FIELDS = tuple(f.name for f in fields(RunConfig))


def parse_trace(value: Any) -> str | None:
    """``--trace``: heads or mean; true means heads, false/none no trace."""
    if value is None or value is False:
        return None
    if value is True:
        return "heads"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRACE_MODES:
            return word
        if word in TRUE_WORDS:
            return "heads"
        if word in (*FALSE_WORDS, "none"):
            return None
    raise VisfocusError(f"--trace must be heads or mean, got {value!r}")


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else parse_text(value, what)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The keys of a YAML ``--config`` file: a mapping whose keys are ``RunConfig`` fields (typed later, with the
    flags, by ``RunConfig.from_values``). Not a file, not YAML, not a mapping, or an unknown key: one error."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise VisfocusError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VisfocusError(f"config file {file} is not valid YAML ({first})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VisfocusError(f"config file {file} must be a mapping of keys to values (e.g. `tasks: scenes_test`), "
                            f"not a {type(data).__name__}; allowed keys: {', '.join(FIELDS)}")
    unknown = sorted(str(key) for key in data if key not in FIELDS)
    if unknown:
        raise VisfocusError(f"config file {file}: unknown keys {unknown}; allowed: {', '.join(FIELDS)}")
    return data


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "run"


def run_dir(config: RunConfig, method_params: dict[str, Any]) -> Path:
    """``<output_path>/<model>/<method>_<args>``: the folder of a run (its arguments as given, defaults left out)."""
    model = "organism" if config.model is None else slug(config.model.rstrip("/").replace("/", "__"))
    method = config.method or "baseline"
    label = "_".join([method, *(f"{k}-{v}" for k, v in sorted(method_params.items()))])
    return Path(config.output_path) / model / slug(label)
