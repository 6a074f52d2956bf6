"""The configuration of one evaluation run (``visfocus eval``, a sweep's trial, ``evaluate`` in Python), declared once.

Each field of ``RunConfig`` carries its ``Setting``: help text, parser, the form of its command-line flag, the
commands that take it, whether it belongs to the identity a resumed run must match, and the lmms-eval model arg that
sets it. The eval and sweep flags (``visfocus.cli``), the YAML ``--config`` keys, the lmms-eval model args
(``visfocus.integrations.lmms.settings``) and the resume identity (``visfocus.run.identity``) are all read from it.
Every value is typed by the project's parsers (``visfocus.values``) whether it came from a flag, YAML, lmms-eval or
Python, so ``"false"`` is false and ``limit: true`` is an error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from visfocus.benchmarks.base import SCORERS
from visfocus.errors import VisfocusError
from visfocus.interventions import typed_method_args
from visfocus.models.loading import MODEL_ARGS, parse_model_args
from visfocus.values import FALSE_WORDS, TRUE_WORDS, parse_bool, parse_int, parse_key_values, parse_names, parse_text

TRACE_MODES = ("heads", "mean")
BASELINE = "baseline"  # how the run without a method is named in results, identities, folders and lmms-eval
BASELINE_NAMES = (BASELINE, "none")  # --method values that mean no method
EVAL, SWEEP = "eval", "sweep"
FLATTENED = "*"  # Setting.lmms: the field's own keys are lmms-eval model args (model_args, method_args)


@dataclass(frozen=True)
class Setting:
    """What a ``RunConfig`` field is, for everything that reads or writes it.

    flag: ``value`` (``--name VALUE``), ``switch`` (``--name`` sets true), ``negated`` (``--no_name`` sets false) or
    ``optional`` (``--name [VALUE]``, ``const`` when no value follows). aliases: older names read as this one (a flag
    ``--no_<alias>`` for a negated flag, YAML keys, lmms-eval model args). lmms: the lmms-eval model arg that sets the
    field (None: not one; ``FLATTENED``: its keys are model args themselves)."""

    help: str
    parse: Callable[[Any, str], Any]  # (value, what) → the typed value, or one VisfocusError naming ``what``
    flag: str = "value"
    commands: tuple[str, ...] = (EVAL, SWEEP)
    identity: bool = False
    lmms: str | None = None
    aliases: tuple[str, ...] = ()
    const: Any = None
    metavar: str | None = None


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else parse_text(value, what)


def _optional_positive(value: Any, what: str) -> int | None:
    return None if value is None else parse_int(value, what, low=1)


def _tasks(value: Any, what: str) -> list[str]:
    names = parse_names(value, what)
    if not names:
        raise VisfocusError("no task given; `visfocus list tasks` shows them")
    return names


def _method(value: Any, what: str) -> str | None:
    name = _optional_text(value, what)
    return None if name is None or name.strip().lower() in BASELINE_NAMES else name


def _model_args(value: Any, what: str) -> dict[str, Any]:
    """The model arguments given, typed (``parse_model_args``), defaults left out."""
    given = parse_key_values(value, "model argument")
    typed = parse_model_args(given)
    return {key: typed[key] for key in given}


def parse_trace(value: Any, what: str = "--trace") -> str | None:
    """The trace mode: heads or mean; true means heads, false/none no trace."""
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
    raise VisfocusError(f"{what} must be heads or mean, got {value!r}")


def _int(low: int) -> Callable[[Any, str], int]:
    return lambda value, what: parse_int(value, what, low=low)


def setting(default: Any, help: str, parse: Callable[[Any, str], Any], **how: Any) -> Any:
    """A ``RunConfig`` field with its ``Setting`` (a list or dict default is copied for each configuration)."""
    meta = {"setting": Setting(help, parse, **how)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    model: str | None = setting(None, "Hub id or local path (default: the built-in model organism)", _optional_text,
                                identity=True, lmms="pretrained")
    model_args: dict[str, Any] = setting(
        {}, f"KEY=VALUE,... for loading the model: {', '.join(MODEL_ARGS)} (e.g. dtype=bfloat16,device=cuda)",
        _model_args, identity=True, lmms=FLATTENED, metavar="KEY=VALUE,...")
    tasks: list[str] = setting(["scenes_test"], "comma-separated task names (`visfocus list tasks`)", _tasks,
                               commands=(EVAL,))
    method: str | None = setting(None, "a registered method (`visfocus list methods`; default: baseline, no method)",
                                 _method, commands=(EVAL,), identity=True, lmms="method")
    method_args: dict[str, Any] = setting(
        {}, "KEY=VALUE,... for the method, e.g. alpha=0.5 (tuples: 1;2;3)",
        lambda value, what: parse_key_values(value, "method argument"), commands=(EVAL,), identity=True,
        lmms=FLATTENED, metavar="KEY=VALUE,...")
    data_root: str | None = setting(None, "folder with the benchmark files (or set VISFOCUS_DATA_ROOT)",
                                    _optional_text)
    limit: int | None = setting(None, "answer the first N selected samples of each task", _optional_positive,
                                metavar="N")
    offset: int = setting(0, "skip the first N samples of each task", _int(0), metavar="N")
    seed: int = setting(0, "torch seed set before the first answer", _int(0), identity=True)
    batch_size: int = setting(1, "samples per forward pass", _int(1), lmms="batch_size")
    max_new_tokens: int = setting(8, "tokens generated per answer", _int(1), identity=True)
    prompt_style: str | None = setting(None, "the task's prompt style, e.g. truefalse or yesno for VSR",
                                       _optional_text, identity=True)
    scorer: str = setting("exact", f"{' or '.join(SCORERS)} (adaptvis: the official lenient scorer)",
                          lambda value, what: parse_text(value, what, choices=SCORERS), identity=True)
    output_path: str = setting("runs", "root folder of run folders", parse_text, metavar="FOLDER")
    log_samples: bool = setting(False, "also store the full chat prompt of every sample", parse_bool, flag="switch",
                                commands=(EVAL,))
    skip_missing: bool = setting(False, "evaluate the rest when images are missing (counted in results)", parse_bool,
                                 flag="switch")
    trace: str | None = setting(
        None, "trace mode: write each sample's last-row attention to traces_<task>/, per head (heads, the default "
        "when the flag has no value) or head-mean (mean)", parse_trace, flag="optional", const="heads",
        commands=(EVAL,), identity=True, lmms="trace", metavar="heads|mean")
    share_prefix: bool = setting(
        True, "prefill every question whole (default: one image's questions share one prefill of its prefix; the "
        "answers are the same)", parse_bool, flag="negated", lmms="share_prefix", aliases=("prefix_sharing",))

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "the run configuration") -> RunConfig:
        """A validated configuration from ``{field: value}`` (flags, a YAML file; an old name is read as its field's);
        an unknown key is one error."""
        config = cls(**known_keys(values, source))
        config.validate()
        return config

    def validate(self) -> None:
        """Type every field in place by its ``Setting`` (``"8"`` → 8, ``"false"`` → False, the model's arguments by
        ``parse_model_args``), then the method's arguments by its parameter types; one error for the first bad one."""
        for f in fields(self):
            setattr(self, f.name, f.metadata["setting"].parse(getattr(self, f.name), label(f.name)))
        if self.method is None:
            if self.method_args:
                raise VisfocusError("--method_args given without --method")
        else:
            self.method_args = typed_method_args(self.method, self.method_args)

    @property
    def method_name(self) -> str:
        """The method as results, identities and folders name it: ``baseline`` for none."""
        return self.method or BASELINE

    def record(self) -> dict[str, Any]:
        """The configuration as ``results.json`` records it (the run without a method is ``baseline``)."""
        return {**asdict(self), "method": self.method_name}


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(RunConfig)}
FIELDS = tuple(SETTINGS)
IDENTITY_FIELDS = tuple(name for name, s in SETTINGS.items() if s.identity)
ALIASES = {alias: name for name, s in SETTINGS.items() for alias in s.aliases}


def label(name: str) -> str:
    """How errors name a field: its flag (``--limit``), or the bare name of a field set by a ``--no_`` flag."""
    return name if SETTINGS[name].flag == "negated" else f"--{name}"


def flag_names(name: str) -> list[str]:
    """The command-line spellings of a field's flag, the current one first."""
    s = SETTINGS[name]
    prefix = "--no_" if s.flag == "negated" else "--"
    return [prefix + spelled for spelled in (name, *s.aliases)]


def command_fields(command: str) -> tuple[str, ...]:
    """The fields ``visfocus <command>`` takes as flags."""
    return tuple(name for name, s in SETTINGS.items() if command in s.commands)


def known_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``values`` with old names read as their fields'; an unknown key is one error listing the allowed ones."""
    unknown = sorted(str(key) for key in values if key not in SETTINGS and key not in ALIASES)
    if unknown:
        raise VisfocusError(f"{source}: unknown keys {unknown}; allowed: {', '.join(FIELDS)}")
    return {ALIASES.get(key, key): value for key, value in values.items()}


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
    return known_keys(data, f"config file {file}")
