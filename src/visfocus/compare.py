"""Paired comparison of two runs (``visfocus compare RUN_A RUN_B``): on the samples both runs share, per task, the
accuracy delta (B − A) with a bootstrap 95 % CI, McNemar's exact p-value and the flip table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visfocus import metrics
from visfocus.errors import VisfocusError
from visfocus.run.results import read_json
from visfocus.run.samples import read_samples
from visfocus.values import parse_int


def load_run(folder: str | Path) -> tuple[dict, dict[str, dict[str, dict]]]:
    """(results.json, {task: {id: sample row}}) of a run folder (rows of older versions read under today's names)."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        raise VisfocusError(f"{folder} is not a visfocus run folder (no results.json)")
    results = read_json(path, "results file")
    if not isinstance(results, dict) or not isinstance(results.get("tasks", {}), dict):
        raise VisfocusError(f"{path} is not a visfocus results file")
    samples = {}
    for name in results.get("tasks", {}):
        file = folder / f"samples_{name}.jsonl"
        if file.is_file():  # read as it is: a torn last line (a killed run) is left out, not repaired here
            samples[name] = read_samples(file).rows
    return results, samples


def compare_samples(rows_a: dict[str, dict], rows_b: dict[str, dict], n_boot: int = 2000, seed: int = 0
                    ) -> dict[str, Any]:
    """Paired statistics on the ids both runs scored."""
    shared = sorted(set(rows_a) & set(rows_b))
    correct_a = [bool(rows_a[i]["correct"]) for i in shared]
    correct_b = [bool(rows_b[i]["correct"]) for i in shared]
    return {"n_shared": len(shared), **metrics.paired_comparison(correct_a, correct_b, n_boot=n_boot, seed=seed)}


def compare_runs(folder_a: str | Path, folder_b: str | Path, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    n_boot = parse_int(n_boot, "--n_boot (bootstrap resamples)", low=1)
    seed = parse_int(seed, "--seed", low=0)
    results_a, samples_a = load_run(folder_a)
    results_b, samples_b = load_run(folder_b)
    shared_tasks = sorted(set(samples_a) & set(samples_b))
    if not shared_tasks:
        raise VisfocusError(f"the runs share no task ({', '.join(sorted(samples_a)) or 'none'} vs "
                            f"{', '.join(sorted(samples_b)) or 'none'})")
    return {"run_a": str(folder_a), "run_b": str(folder_b),
            "method_a": results_a.get("method"), "method_b": results_b.get("method"),
            "tasks": {name: compare_samples(samples_a[name], samples_b[name], n_boot, seed)
                      for name in shared_tasks}}


def format_table(comparison: dict[str, Any]) -> str:
    head = (f"{'task':<28}{'n':>6}{'acc A':>8}{'acc B':>8}{'Δ (B−A)':>9}{'95% CI':>18}{'McNemar p':>11}"
            f"{'fixed':>7}{'broken':>8}{'both ✓':>8}{'both ✗':>8}")
    lines = [head]
    for name, c in comparison["tasks"].items():
        f = c["flips"]
        ci = f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
        lines.append(f"{name:<28}{c['n_shared']:>6}{c['accuracy_a']:>8.3f}{c['accuracy_b']:>8.3f}"
                     f"{c['delta']:>+9.3f}{ci:>18}{c['mcnemar_p']:>11.4f}"
                     f"{f['fixed']:>7}{f['broken']:>8}{f['both_right']:>8}{f['both_wrong']:>8}")
    return "\n".join(lines)
