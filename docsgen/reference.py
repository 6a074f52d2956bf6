"""Reference text generated at build time from visfocus's own declarations, so that it cannot drift: the command
line from the argparse parser, the methods from the method registry, the tasks and scorers from the task registry,
the model families from the adapter registry, and the results schema from its TypedDicts. Each generator returns
Markdown; ``docsgen.hooks`` puts it where a page says ``<!-- generated: NAME -->``. Pure apart from importing."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import textwrap
import typing
from collections.abc import Callable

GENERATORS: dict[str, Callable[[], str]] = {}


def generator(name: str):
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        GENERATORS[name] = fn
        return fn
    return register


def generate(name: str) -> str:
    if name not in GENERATORS:
        raise KeyError(f"no generated reference named {name!r}; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]()


def cell(text: object) -> str:
    """``text`` made safe for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


# --- command line -----------------------------------------------------------------------------------------------
def sub_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str,
                                                                                            argparse.ArgumentParser]]:
    """Every sub-command, nested ones included, depth first: (words after ``visfocus``, its help, its parser)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append(((*prefix, name), helps.get(name) or "", sub))
                found += sub_commands(sub, (*prefix, name))
    return found


def _default_text(action: argparse.Action) -> str:
    switch = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
    if action.default in (None, argparse.SUPPRESS) or switch:
        return ""
    return f"`{action.default}`"


def command_section(words: tuple[str, ...], help_text: str, parser: argparse.ArgumentParser) -> str:
    anchor = "-".join(words)
    lines = [f"## visfocus {' '.join(words)} {{ #{anchor} }}", "", help_text[:1].upper() + help_text[1:] + ".", ""]
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    lines += ["```text", textwrap.fill(usage, 110, subsequent_indent="    ", break_on_hyphens=False), "```", ""]
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
        if action.metavar and action.option_strings:
            name += f" `{action.metavar}`"
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            name += " (" + ", ".join(f"`{c}`" for c in action.choices) + ")"
        required = " (required)" if getattr(action, "required", False) and action.option_strings else ""
        rows.append(f"| {name}{required} | {cell(action.help or '')} | {_default_text(action)} |")
    if rows:
        lines += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


@generator("cli")
def cli_reference() -> str:
    from visfocus.cli import build_parser

    parser = build_parser()
    commands = sub_commands(parser)
    lines = ["| command | what it does |", "|---|---|"]
    lines += [f"| [`visfocus {' '.join(w)}`](#{'-'.join(w)}) | {cell(h)} |" for w, h, _ in commands]
    lines.append("")
    lines += [command_section(w, h, p) for w, h, p in commands]
    return "\n".join(lines)


# --- methods ----------------------------------------------------------------------------------------------------
def _param_row(spec, meaning: str) -> str:
    limits = ", ".join(f"`{c}`" for c in spec.choices) if spec.choices else spec.bounds_text()
    optional = " or `None`" if spec.optional and spec.default is not None else ""
    return (f"| `{spec.name}` | {cell(spec.paper or '')} | `{spec.default!r}`{optional} | {cell(limits)} | "
            f"{cell(meaning)} |")


@generator("methods")
def methods_reference() -> str:
    from visfocus.interventions import METHODS
    from visfocus.interventions.base import param_specs
    from visfocus.listing import describe_method

    names = sorted(METHODS)
    lines = ["| method | paper | acts on | side streams |", "|---|---|---|---|"]
    for name in names:
        cls = METHODS[name]
        lines.append(f"| [`{name}`](#{name}) | {cell(getattr(cls, 'paper', '') or '')} | "
                     f"{', '.join(sorted(cls.sites)) or '—'} | {', '.join(sorted(cls.side_streams)) or '—'} |")
    lines.append("")
    for name in names:
        cls = METHODS[name]
        lines += [f"## {name} {{ #{name} }}", ""]
        if getattr(cls, "paper", ""):
            lines += [f"**Paper.** {cls.paper}", ""]
        if getattr(cls, "equation", ""):
            lines += ["**Equation.**", "", "```text", cls.equation.strip(), "```", ""]
        lines += [first_paragraph(inspect.getmodule(cls).__doc__), ""]
        specs = param_specs(name)
        if specs:
            meanings = field_comments(cls.Params)
            lines += ["| parameter | paper | default | allowed | meaning |", "|---|---|---|---|---|",
                      *[_param_row(s, meanings.get(s.name, "")) for s in specs], ""]
            if cls.search_grid:
                grid = "; ".join(f"`{k}` ∈ {{{', '.join(map(str, v))}}}" for k, v in cls.search_grid.items())
                lines += [f"Default sweep grid: {grid}.", ""]
        fidelity = getattr(cls, "fidelity", ())
        if fidelity:
            lines += ["**Fidelity.** Checked by the test suite against:", "",
                      "| reference | equal | tolerance | option | test |", "|---|---|---|---|---|"]
            lines += [f"| {cell(f.reference)} | {cell(f.equal)} | {cell(f.tolerance)} | "
                      f"{'`' + f.option + '`' if f.option else 'default'} | `{cell(f.test)}` |" for f in fidelity]
            lines.append("")
        lines += ["**Declared capabilities** (`visfocus list methods`):", "", "```text",
                  *describe_method(name)[1:], "```", ""]
    return "\n".join(lines)


# --- tasks ------------------------------------------------------------------------------------------------------
@generator("tasks")
def tasks_reference() -> str:
    from visfocus.benchmarks import TASKS, task
    from visfocus.benchmarks.base import SCORERS

    lines = ["| task | benchmark | answers | prompt styles | main metric | data |", "|---|---|---|---|---|---|"]
    classes = {}
    for name in sorted(TASKS):
        t = task(name)
        cls = type(t)
        classes.setdefault(cls, []).append(name)
        lines.append(f"| `{name}` | [{cls.__name__}](#{cls.__name__.lower()}) | {cls.answer_type} | "
                     f"{', '.join(f'`{s}`' for s in cls.prompt_styles)} | `{cls.main_metric}` | "
                     f"{'files under `--data_root`' if cls.reads_data else 'generated'} |")
    lines += ["", f"Scorers (`--scorer`): {', '.join(f'`{s}`' for s in SCORERS)}.", ""]
    for cls, names in classes.items():
        lines += [f"## {cls.__name__} {{ #{cls.__name__.lower()} }}", "",
                  f"Tasks: {', '.join(f'`{n}`' for n in names)}. Defined in `{cls.__module__}`.", "",
                  inspect.cleandoc(inspect.getmodule(cls).__doc__ or ""), ""]
        if cls.__doc__ and cls.__doc__ != inspect.getmodule(cls).__doc__:
            lines += [inspect.cleandoc(cls.__doc__), ""]
        for method in ("parse", "is_correct", "score"):
            fn = getattr(cls, method)
            if fn.__doc__:
                owner = next(k for k in cls.__mro__ if method in vars(k))
                lines += [f"- `{method}` (from `{owner.__name__}`): {' '.join(inspect.cleandoc(fn.__doc__).split())}"]
        lines.append("")
    return "\n".join(lines)


# --- model families ---------------------------------------------------------------------------------------------
@generator("families")
def families_reference() -> str:
    from visfocus.models import ADAPTERS

    families = {cls.family: cls for cls in ADAPTERS.values()}
    lines = ["| family | transformers model types | smallest checkpoint | token grid | prefix-LM "
             "| side streams as rows |", "|---|---|---|---|---|---|"]
    for family, cls in families.items():
        grid = "no: " + cell(cls.no_grid_reason) if cls.no_grid_reason else "yes"
        lines.append(f"| [`{family}`](#{family}) | {', '.join(f'`{t}`' for t in cls.model_types)} | "
                     f"`{cls.checkpoint}` | {grid} | {'yes' if cls.prefix_lm else 'no'} | "
                     f"{'yes' if cls.side_stream_rows else 'no'} |")
    lines.append("")
    for family, cls in families.items():
        lines += [f"## {family} {{ #{family} }}", "", f"`{cls.__module__}.{cls.__name__}`", "",
                  inspect.cleandoc(inspect.getmodule(cls).__doc__ or ""), "",
                  "Its smallest checkpoint on WhatsUp under ScalingVis (a GPU and the Hub; `--data_root` holds the "
                  "images, see [Benchmarks and data](../benchmarks.md)):", "", "```bash",
                  f"visfocus eval --model {cls.checkpoint} --model_args dtype=bfloat16,device_map=auto "
                  "--tasks whatsup_controlled_a_dev --method scaling_vis --data_root ~/data", "```", ""]
    return "\n".join(lines)


# --- results schema ---------------------------------------------------------------------------------------------
def field_comments(cls: type) -> dict[str, str]:
    """What each field of a class body means, by field name: the ``# comment`` lines right above it and the one
    after it (how the results TypedDicts and the methods' parameter dataclasses document their fields)."""
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if k.__module__.startswith("visfocus")]):
        source = textwrap.dedent(inspect.getsource(klass))
        lines = source.splitlines()
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above = []
                row = node.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#"):
                    above.insert(0, lines[row].strip().lstrip("#").strip())
                    row -= 1
                line = lines[node.end_lineno - 1]
                after = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                comments[node.target.id] = " ".join(part for part in (*above, after) if part)
    return comments


def _type_text(tp) -> str:
    """``list[Launch]``, ``str or None``: a field's type as a reader wants it (no module paths, no pipes)."""
    text = tp.__name__ if isinstance(tp, type) else str(tp)
    return re.sub(r"\b(?:[a-z_]+\.)+([A-Z]\w*)", r"\1", text).replace(" | ", " or ")


@generator("results-schema")
def results_schema() -> str:
    from visfocus.run import results

    typed = [results.Results, results.TaskResult, results.NSamples, results.Cost, results.Launch]
    names = {cls.__name__ for cls in typed}
    lines = [f"Schema version: **{results.SCHEMA_VERSION}** (`visfocus.run.results.SCHEMA_VERSION`).", ""]
    for cls in typed:
        hints = typing.get_type_hints(cls)
        comments = field_comments(cls)
        lines += [f"### {cls.__name__} {{ #{cls.__name__.lower()} }}", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            lines += [first_paragraph(cls.__doc__), ""]
        lines += ["| key | type | meaning |", "|---|---|---|"]
        for key, tp in hints.items():
            type_text = _type_text(tp)
            if type_text in names:
                type_text = f"[{type_text}](#{type_text.lower()})"
            else:
                type_text = f"`{type_text}`"
            lines.append(f"| `{key}` | {type_text} | {cell(comments.get(key, ''))} |")
        lines.append("")
    return "\n".join(lines)


# --- Python API (mkdocstrings directives, rendered by the mkdocstrings plugin after this hook) ------------------
RESULT_OBJECTS = ("visfocus.steer.trace.Trace", "visfocus.models.layout.RowLayout", "visfocus.models.layout.ImageView",
                  "visfocus.tracefile.load_traces", "visfocus.metrics")
EXTENDING_OBJECTS = ("visfocus.interventions.base.Method", "visfocus.interventions.base.register_method",
                     "visfocus.interventions.base.Fidelity", "visfocus.interventions.params",
                     "visfocus.steer.edits", "visfocus.steer.sites", "visfocus.steer.streams",
                     "visfocus.benchmarks.base.Task", "visfocus.benchmarks.base.Record",
                     "visfocus.benchmarks.base.register_task", "visfocus.models.base.Adapter",
                     "visfocus.models.base.register_adapter")


def _directives(paths, heading_level: int = 3) -> str:
    return "\n\n".join(f"::: {path}\n    options:\n      heading_level: {heading_level}" for path in paths)


@generator("api-public")
def api_public() -> str:
    import visfocus

    return _directives(f"visfocus.{name}" for name in visfocus.__all__)


@generator("api-results")
def api_results() -> str:
    return _directives(RESULT_OBJECTS)


@generator("api-extending")
def api_extending() -> str:
    return _directives(EXTENDING_OBJECTS)  # a renamed object fails the strict build (mkdocstrings)


# --- sample rows ------------------------------------------------------------------------------------------------
@generator("sample-row")
def sample_row_keys() -> str:
    """The keys of one line of ``samples_<task>.jsonl``, read off ``sample_row`` itself on a stand-in answer."""
    from types import SimpleNamespace

    from visfocus.benchmarks import Record
    from visfocus.run.samples import sample_row

    cost = {"forward_passes": 0, "prefill_tokens": 0, "decode_tokens": 0, "shared_prefix_tokens": 0, "seconds": 0.0}
    answer = SimpleNamespace(text="", confidence=0.0, first_token="", cost=cost, extras={})
    row = sample_row(Record(id="", question="", gold=""), answer, None, False, 1, prompt="")
    keys = ", ".join(f"`{key}`" for key in row)
    return f"Keys: {keys} (`prompt` only with `--log_samples`).\n\n{inspect.cleandoc(sample_row.__doc__)}\n"
