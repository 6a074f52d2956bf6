"""The method contract and registry: one file per method, one ``@register_method`` each.

A method declares, on its class, everything the rest of visfocus needs to know about it, and everyone reads it from
the registry (``METHODS``) — the sweep, the app, the overhead benchmark, the lmms-eval plugin and the tests:

- ``Params``: its typed parameter dataclass (``visfocus.interventions.params``), the one source of validation,
  parsers and app controls; ``identity`` (the point where it changes nothing) and ``search_grid``;
- ``sites``: where it acts on the model, among the engine's sites (``visfocus.steer.sites.SITES``: attention,
  layer_input, layer_output, logits), and ``side_streams`` (``visfocus.steer.streams.STREAMS``); the engine refuses
  a site or a stream the method did not declare;
- ``processors_after_correction``: whether the model's own logits processors (penalties, n-gram, min tokens, bad
  words, suppressed tokens, the warpers) run after its correction at the logits site, as in the official code;
- ``shares_prefix`` (its answers stay exact from a stored image prefix), ``supports_sampling`` (the caller's
  sampling applies), ``needs_options`` (it reads the answer options), ``extras`` (the per-row decisions it reports,
  with their meaning), ``app_outputs`` (extras the app shows as pictures), ``bench_points`` (the configurations the
  overhead benchmark times) and a data-dependent grid (``wants_dev_confidences``);
- ``variant_edits`` / ``choose_variant``: its answer is a re-run of the last prompt token under one of a few edit
  sets, chosen per row from the unedited row alone (plain, ScalingVis, AdaptVis). Such methods run as variant
  columns of the prompt's own forward (``visfocus.steer.variants``), and a sweep's grid points of them together
  (``visfocus.interventions.variants``);
- ``paper`` (authors, venue, title and a link), ``equation`` (the paper's defining equation in plain Unicode, in the
  symbols its parameters' ``paper=`` names) and ``fidelity``: the references (``Fidelity``) its output is checked
  against, each by a named test of the suite, with the tolerance that test asserts and the option that reproduces a
  reference where it differs from the paper. The site's method reference is generated from these.

It turns a prepared ``Batch`` (``visfocus.interventions.batch``) into a generation through the engine only: ``apply``
validates the parameters once against the model, tells the engine what the method declared, runs it and checks that
the extras it reports are the declared ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from visfocus.errors import VisfocusError
from visfocus.interventions.batch import Batch
from visfocus.interventions.params import (  # noqa: F401  (re-exported: the names methods and callers import)
    KINDS,
    LayerSpec,
    Params,
    ParamSpec,
    check_choice,
    check_layers,
    check_number,
    edit_layers,
    fraction_range,
    param,
    resolve_layers,
    specs_of,
    typed_values,
)
from visfocus.steer.edits import Edit
from visfocus.steer.runner import Generation
from visfocus.steer.sites import SITES, Contract
from visfocus.steer.streams import STREAMS

METHODS: dict[str, type[Method]] = {}
UNAVAILABLE: dict[str, str] = {}  # modules named in VISFOCUS_METHODS that failed to import: {module: error}


@dataclass
class VariantChoice:
    """What a variant method (``Method.variant_edits``) decides from the unedited row: per batch row the index of its
    edit set (``visfocus.steer.variants.UNEDITED``: none), the edits of the decoding rows (one edit for the whole
    batch, per-row values inside it) and the per-row extras it reports (None: none)."""

    choice: list[int]
    decode_edits: tuple[Edit, ...] = ()
    extras: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Fidelity:
    """One reference this method's output has been checked against, by a test in the suite."""

    reference: str  # what it is compared with: the reference code (repository and file), or an independent one
    equal: str  # what is equal: e.g. "answer ids and first-token scores"
    tolerance: str  # what the test asserts: e.g. "fp32, max abs ≤ 1e-5" or "exact"
    test: str  # pytest node id of the test that checks it: "tests/test_method_adaptvis.py::test_name"
    option: str | None = None  # the parameters reproducing this reference where it differs from the paper ("k=v,...")


@dataclass
class MethodResult:
    generation: Generation
    extras: list[dict[str, Any]] | None = None  # per batch row: what the method decided (its declared ``extras``)
    batch: Batch | None = None  # the batch the answer came from, when the method changed it (VEA)


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    search_grid: ClassVar[dict[str, tuple]] = {}
    identity: ClassVar[dict[str, float]] = {}  # parameter values at which the method changes nothing
    # where the method acts on the model (``visfocus.steer.sites.SITES``) and the side streams it decodes beside
    # the prompt (``visfocus.steer.streams.STREAMS``); the engine refuses anything not declared here
    sites: ClassVar[frozenset[str]] = frozenset()
    side_streams: ClassVar[frozenset[str]] = frozenset()
    # Where the model's own logits processors (its generation config's and the caller's: repetition penalty, no-repeat
    # n-gram, min length / min new tokens, bad words, suppressed tokens, …, then the sampling warpers) run relative to
    # the method's processors at the logits site: True, after its correction, as the official code of every
    # correcting method has it (VCD, DoLa, DeCo, M3ID); False, where transformers puts a caller's processor (after
    # its own non-warper processors, before the warpers), for a method whose official code passes its correction to
    # ``generate`` as such (PAI). The engine applies it (``visfocus.steer.processors``).
    processors_after_correction: ClassVar[bool] = True
    # The method's answers stay exact when a batch starts from stored image prefixes (its edits touch only rows after
    # the prefix). A method that changes the image or the prompt before the question sets this False (an instance may
    # decide from its parameters).
    shares_prefix: ClassVar[bool] = True
    # Where a stored image prefix may end: "template" (after the image and the template text that follows it) or
    # "image" (right after the image's last token), for a method that edits every prompt row after the image (VAF):
    # those rows then all run in the question's forward, under its edits.
    prefix_split: ClassVar[str] = "template"
    # The method decodes through ``runner.generate`` without choosing greedy decoding itself, so the caller's sampling
    # (``answer_batch(sampling=...)``) applies. A method that decodes its own way (greedy by definition, or sampling
    # under its own parameters) sets this False.
    supports_sampling: ClassVar[bool] = True
    # the per-row decisions the method reports in ``Answer.extras``: {key: what it means}
    extras: ClassVar[dict[str, str]] = {}
    # extras the app draws over the image: {extra key: caption} (e.g. VEA's evidence map, a (rows, cols) grid)
    app_outputs: ClassVar[dict[str, str]] = {}
    # The method reads attention on the image's token grid (maps, pixel boxes): a family whose image tokens have no
    # grid (``Adapter.no_grid_reason``) is refused with that reason before any work.
    needs_grid: ClassVar[bool] = False
    # the overhead benchmark's configurations: {label: parameters} (None: one point, ``{name: {}}``)
    bench_points: ClassVar[dict[str, dict[str, Any]] | None] = None
    # the paper (authors et al., venue year, title, a link), its defining equation(s) in plain Unicode in the symbols
    # of the parameters' ``paper=`` names, and the references a test checks the method against
    paper: ClassVar[str] = ""
    equation: ClassVar[str] = ""
    fidelity: ClassVar[tuple[Fidelity, ...]] = ()

    def __init__(self, params: Params) -> None:
        params.validate()
        self.params = params

    # --- capabilities that depend on the parameters --------------------------------------------------------------
    @property
    def needs_options(self) -> bool:
        """Whether the method reads the answer options of every question (``Batch.options``)."""
        return False

    @classmethod
    def benchmark_points(cls) -> dict[str, dict[str, Any]]:
        return dict(cls.bench_points) if cls.bench_points is not None else {cls.name: {}}

    @classmethod
    def wants_dev_confidences(cls, grid: Mapping[str, list], given: set[str]) -> bool:
        """Whether a sweep must first answer the dev task without a method to complete ``grid`` from its
        confidences (``grid_with_dev_confidences``); ``given``: the grid keys the user chose."""
        return False

    @classmethod
    def grid_with_dev_confidences(cls, grid: Mapping[str, list], confidences: list[float]) -> dict[str, list]:
        """``grid`` completed from the dev task's confidences without a method (``wants_dev_confidences``)."""
        return dict(grid)

    # --- running ----------------------------------------------------------------------------------------------------
    def contract(self) -> Contract:
        """What the engine lets this method touch."""
        return Contract(method=self.name, sites=frozenset(self.sites), side_streams=frozenset(self.side_streams),
                        processors_after_correction=self.processors_after_correction)

    def apply(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        """Validate the parameters against the model once, run the method under its declared contract and check the
        extras it reports."""
        self.check_batch(batch)
        batch.runner.contract = self.contract()
        return self.checked(self.run(batch, max_new_tokens=max_new_tokens))

    def check_batch(self, batch: Batch) -> None:
        """One clear error, before any work, for parameters this model cannot take, missing answer options or a
        family without the token grid the method needs."""
        self.params.validate(batch.num_layers)
        if self.needs_options and any(o is None for o in batch.options):
            raise VisfocusError(f"method '{self.name}' with these parameters needs the answer options of every "
                                f"question (answer(..., options=[...]) or a task with options)")
        if self.needs_grid and batch.adapter.no_grid_reason:
            raise VisfocusError(f"method '{self.name}' needs a token grid over the image: "
                                f"{batch.adapter.no_grid_reason}")

    def checked(self, result: MethodResult) -> MethodResult:
        """``result``, once its extras are known to be the declared ones."""
        undeclared = {key for row in result.extras or [] for key in row} - set(self.extras)
        if undeclared:
            raise RuntimeError(f"method '{self.name}' reported extras it does not declare: {sorted(undeclared)}")
        return result

    def variant_edits(self, num_layers: int) -> tuple[tuple[Edit, ...], ...] | None:
        """The edit sets (attention site) of the last prompt token's re-runs this method's answer is chosen from, when
        its whole answer is one of them picked per row from the unedited row (``choose_variant``), decoding greedily
        on from it; None (here): the method does not answer that way."""
        return None

    def choose_variant(self, batch: Batch, unedited_logits) -> VariantChoice:
        """Per row, which of ``variant_edits`` answers, from the unedited last prompt row's next-token logits
        (B, V) float32 (only for a method with ``variant_edits``)."""
        raise NotImplementedError

    def run(self, batch: Batch, *, max_new_tokens: int) -> MethodResult:
        """Answer ``batch`` (see ``Batch`` for everything it holds) in at most ``max_new_tokens`` tokens. Called by
        ``apply`` with validated parameters."""
        raise NotImplementedError

    # --- parameters ------------------------------------------------------------------------------------------------
    def resolved(self, num_layers: int) -> dict[str, list[int]]:
        """The parameters given as a fraction range of the depth, as the layer indices they mean on a model of
        ``num_layers`` layers (recorded in a run's results)."""
        return {name: list(resolve_layers(value, num_layers))
                for name, value in dataclasses.asdict(self.params).items() if fraction_range(value) is not None}

    def distance_from_identity(self) -> float:
        """How far the parameters are from doing nothing (a sweep breaks ties towards the smallest)."""
        values = dataclasses.asdict(self.params)
        return sum(abs(float(values[k]) - v) for k, v in self.identity.items())

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in dataclasses.asdict(self.params).items())})"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: list ``cls`` under ``cls.name`` (checking what it declares)."""
    unknown = (set(cls.sites) - set(SITES)) | (set(cls.side_streams) - set(STREAMS))
    if unknown:
        raise TypeError(f"method '{cls.name}' declares unknown sites or side streams: {sorted(unknown)}")
    METHODS[cls.name] = cls
    return cls


def param_specs(name: str) -> list[ParamSpec]:
    """The parameters of method ``name`` as controls, in declaration order, from its parameter dataclass."""
    return specs_of(METHODS[_known(name)].Params)


def method(name: str, **kwargs: Any) -> Method:
    """Build a registered method with validated parameters, e.g. ``method("scaling_vis", alpha=0.5)``. Python values
    are taken as they are (``validate`` refuses a wrong type); text from a user goes through ``typed_method_args``."""
    cls = METHODS[_known(name)]
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise VisfocusError(f"method '{name}' has no parameter {', '.join(unknown)}; its parameters: "
                            f"{', '.join(sorted(fields)) or 'none'}")
    return cls(cls.Params(**kwargs))


def methods() -> dict[str, dict[str, Any]]:
    """Registered methods and their parameters with defaults: ``{name: {param: default}}``."""
    return {name: {f.name: f.default for f in dataclasses.fields(cls.Params)} for name, cls in sorted(METHODS.items())}


def method_class(name: Any) -> type[Method]:
    """The registered method ``name``; one clear error naming the registered ones (and any module of
    ``VISFOCUS_METHODS`` that failed to import) otherwise."""
    return METHODS[_known(name)]


def _known(name: Any) -> str:
    if not isinstance(name, str) or name not in METHODS:
        failed = "".join(f"; VISFOCUS_METHODS names {module!r}, which failed to import ({error})"
                         for module, error in UNAVAILABLE.items())
        raise VisfocusError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}{failed}")
    return name


def typed_method_args(name: str, given: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters of method ``name`` from ``"KEY=VALUE,..."`` or a mapping, typed by their declarations
    (``visfocus.interventions.params.typed_values``)."""
    return typed_values(METHODS[_known(name)].Params, given, name)


def parse_method_args(name: str, text: str) -> dict[str, Any]:
    """``"alpha=0.5,layers=1;2"`` → typed kwargs for method ``name`` (tuples use ';' between items)."""
    return typed_method_args(name, text)
