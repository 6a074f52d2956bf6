"""Command line: ``visfocus eval | sweep | compare | report | heatmap | finetune | list | bench | profile-layers``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from visfocus import distributed
from visfocus.errors import VisfocusError


def _eval(args: argparse.Namespace) -> int:
    from visfocus.evaluate import evaluate
    from visfocus.run.config import EVAL, RunConfig, read_config_file

    values = read_config_file(args.config) if args.config else {}
    values.update(_given(args, EVAL))
    out = evaluate(RunConfig.from_values(values, f"config file {args.config}" if args.config else "visfocus eval"))
    if not distributed.current().is_main:  # rank 0 reports for all
        return 0
    print(f"\nresults: {out['config']['run_dir']}/results.json")
    empty = []
    for name in out["config"]["tasks"]:
        result = out["tasks"][name]
        m = result["metrics"]
        n = result["n_samples"]
        if n["effective"] == 0:
            why = (f"all {n['selected']} selected samples have missing or unusable images" if n["selected"]
                   else "no sample selected (see --offset and --limit)")
            empty.append(f"{name} ({why})")
            print(f"  {name}: nothing evaluated — {why}")
            continue
        print(f"  {name}: accuracy {m.get('accuracy', float('nan')):.4f} on {n['effective']} samples"
              + (f" ({n['missing_images']} missing images skipped)" if n["missing_images"] else ""))
        for line in _relation_lines(m):
            print("    " + line)
    if empty:
        raise VisfocusError(f"nothing was evaluated on {'; '.join(empty)}; the results file records the counts")
    return 0


def _relation_lines(metrics: dict[str, Any]) -> list[str]:
    """Per relation: n, accuracy, mean confidence (when the task has relations)."""
    per = metrics.get("per_relation") or {}
    if not per:
        return []
    lines = [f"{'relation':<12}{'n':>6}{'accuracy':>10}{'confidence':>12}"]
    for relation, v in per.items():
        conf = "-" if v.get("mean_confidence") is None else f"{v['mean_confidence']:.4f}"
        lines.append(f"{relation:<12}{v['n']:>6}{v['accuracy']:>10.4f}{conf:>12}")
    return lines


def _sweep(args: argparse.Namespace) -> int:
    from visfocus.run.config import SWEEP, RunConfig
    from visfocus.sweep import parse_grid, sweep

    # the sweep's run flags make its base run (the method searched and its arguments are set per trial)
    base = RunConfig.from_values(_given(args, SWEEP), "visfocus sweep")
    grid = parse_grid(args.method, args.grid) if args.grid else None
    out = sweep(base, args.dev_task, args.eval_task, args.method, grid)
    if not distributed.current().is_main:
        return 0
    metric = out["metric"]
    print(f"\n{len(out['trials'])} trials on {args.dev_task} ({metric}; baseline {out['dev_baseline'][metric]:.4f}):")
    for trial in sorted(out["trials"], key=lambda t: -(t["metrics"][metric] or 0))[:10]:
        print(f"  {trial['metrics'][metric]:.4f}  {trial['args']}")
    print(f"chosen: {out['chosen']}  ({out['chosen_run']})")
    if "test" in out:
        print(f"{args.eval_task}: baseline {out['test']['baseline'].get(metric, float('nan')):.4f} → "
              f"chosen {out['test']['chosen'].get(metric, float('nan')):.4f}")
    print(f"written: {out['path']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from visfocus.compare import compare_runs, format_table
    from visfocus.durable import replace_file

    comparison = compare_runs(args.run_a, args.run_b, n_boot=args.n_boot, seed=args.seed)
    print(format_table(comparison))
    out = Path(args.output) if args.output else Path(args.run_b) / f"compare_vs_{Path(args.run_a).name}.json"
    replace_file(out, json.dumps(comparison, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    import visfocus as vf
    from visfocus.models import ADAPTERS

    if args.what in ("all", "methods"):  # what each method declares (visfocus.listing)
        from visfocus.listing import describe_methods

        print("methods:")
        print(textwrap.indent(describe_methods(), "  "))
    if args.what in ("all", "tasks"):
        print("tasks:")
        for name in vf.tasks():
            print(f"  {name}")
    if args.what in ("all", "models"):  # every image-text-to-text model type: supported or why not (catalog)
        from visfocus.models.catalog import catalog, format_catalog, image_text_to_text_model_types

        print("model families: " + ", ".join(sorted({cls.family for cls in ADAPTERS.values()})))
        if args.what == "models":
            print("\n".join(format_catalog(catalog())))
        else:
            rest = len(set(image_text_to_text_model_types()) - set(ADAPTERS))
            print(f"  ({rest} other image-text-to-text model types not supported: `visfocus list models` says why)")
    return 0


def _lmms_tasks_path(args: argparse.Namespace) -> int:
    from visfocus.integrations.lmms import TASK_FILES

    print(TASK_FILES)
    return 0


# Sub-commands whose flags and work live in one module each: name → (module with run(args), module with
# add_arguments(parser) — kept free of heavy imports where it matters —, help).
MODULE_COMMANDS = {
    "report": ("visfocus.report", "visfocus.report",
               "one self-contained HTML report of a run (with --vs: against a baseline)"),
    "study": ("visfocus.study", "visfocus.study",
              "the AdaptVis paper's analyses in one report: sweeps, confidence, attention by layer, α, branches"),
    "heatmap": ("visfocus.heatmap", "visfocus.heatmap", "one example's attention heatmaps on the image, chosen layers"),
    "finetune": ("visfocus.train.finetune", "visfocus.train.config",
                 "fine-tune (full or LoRA, vision optionally frozen) on a task"),
    "organism": ("visfocus.organism.train", "visfocus.organism.train",
                 "the built-in model organism: train it from scratch, or print its model card"),
    "profile-layers": ("visfocus.profile_layers", "visfocus.profile_layers",
                       "VEA layer profiling: attention-vs-box AUROC per layer"),
    "app": ("visfocus.app", "visfocus.app", "compare methods on one image and see where the model looks (Gradio)"),
    "bench": ("visfocus.overhead", "visfocus.overhead", "overhead benchmark: each method's time and memory against "
              "plain SDPA in one run (also: python benchmarks/overhead.py)"),
}


def add_run_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of ``command`` that set run configuration fields, one per field that ``visfocus.run.config``
    declares for it, in its form (a value, a switch, ``--no_<name>``, or an optional value). Values stay text here:
    the field's own parser types them (``RunConfig.validate``), whatever their source."""
    from visfocus.run.config import SETTINGS, RunConfig, command_fields, flag_names

    defaults = RunConfig()
    for name in command_fields(command):
        s, default = SETTINGS[name], getattr(defaults, name)
        flags, text = flag_names(name), s.help
        if s.flag == "value" and default not in (None, {}) and "default" not in text:
            text += f" (default: {','.join(default) if isinstance(default, list) else default})"
        if len(flags) > 1:
            text += f" ({', '.join(flags[1:])}: old name)"
        if s.flag == "switch":
            parser.add_argument(*flags, dest=name, action="store_true", default=None, help=text)
        elif s.flag == "negated":
            parser.add_argument(*flags, dest=name, action="store_false", default=None, help=text)
        elif s.flag == "optional":
            parser.add_argument(*flags, dest=name, nargs="?", const=s.const, metavar=s.metavar, help=text)
        else:
            parser.add_argument(*flags, dest=name, metavar=s.metavar, help=text)


def _given(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The run configuration fields given on the command line of ``command``."""
    from visfocus.run.config import command_fields

    return {name: getattr(args, name) for name in command_fields(command) if getattr(args, name, None) is not None}


class Parser(argparse.ArgumentParser):
    """argparse with our error format: a bad flag is one ``visfocus: error:`` line (exit status 2), like every other
    bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"visfocus: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="visfocus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate a model (optionally under a method) on tasks; resumable")
    add_run_flags(ev, "eval")
    ev.add_argument("--config", help="YAML file with the same keys as these flags (flags override it)")
    ev.set_defaults(func=_eval)

    sw = sub.add_parser("sweep", help="grid search on a dev task, then the chosen point on an eval task")
    sw.add_argument("--dev_task", "--task", dest="dev_task", required=True,
                    help="the task the grid is searched on (--task: its old name)")
    sw.add_argument("--eval_task", help="the task the chosen point and the baseline are reported on")
    sw.add_argument("--method", required=True, help="the method searched (`visfocus list methods`)")
    sw.add_argument("--grid", help="KEY=V1|V2|...,KEY2=... (default: the method's search grid)")
    add_run_flags(sw, "sweep")
    sw.set_defaults(func=_sweep)

    cmp = sub.add_parser("compare", help="paired comparison of two runs on their shared samples")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--output", help="JSON file (default: RUN_B/compare_vs_<RUN_A>.json)")
    cmp.add_argument("--n_boot", type=int, default=2000)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.set_defaults(func=_compare)

    ls = sub.add_parser("list", help="registered methods, tasks and model families")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "methods", "tasks", "models"])
    ls.set_defaults(func=_list)

    tp = sub.add_parser("lmms-tasks-path", help="print the folder of visfocus's lmms-eval task files (for lmms-eval "
                        "--include_path)")
    tp.set_defaults(func=_lmms_tasks_path)

    for name, (module, flags_module, help_text) in MODULE_COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        importlib.import_module(flags_module).add_arguments(command)
        command.set_defaults(func=lambda args, module=module: importlib.import_module(module).run(args))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VisfocusError as err:
        rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"visfocus: error: {rank}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visfocus: interrupted; finished samples are saved — run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output stopped reading (`visfocus list models | head`): stop quietly, with nothing left
        # to flush into the closed pipe at exit
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
