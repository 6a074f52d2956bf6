"""Before/after check for refactors: every method's samples on the built-in organism must not change.

    python benchmarks/samples_identity.py run OUT          # one `visfocus eval` per registered method into OUT
    python benchmarks/samples_identity.py compare OLD NEW  # field by field; exits 1 on any difference

``run`` answers ``scenes_test`` (``--limit``, default 24) under every method in the registry with its default
parameters, batch size 4, greedy, 8 new tokens (the same flags on any commit: run it once on the old commit in a git
worktree, once on the new). ``compare`` reads both folders' ``samples_scenes_test.jsonl`` files and compares every
field but the timings; a field a refactor renamed is compared under its new name (``RENAMED``). Floats must agree
exactly: the refactor may move code, not change numbers."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TASK = "scenes_test"
TIMINGS = {"seconds"}
# old name → new name (a value moved into the method's extras is compared there)
RENAMED = {"passes": "forward_passes", "alpha_used": ("extras", "alpha_used"), "method_extras": "extras"}
# (method, old field) no longer reported on purpose: VAF's "alpha_used" was its constant enhance parameter, which the
# run's method arguments already hold
DROPPED = {("vaf", "alpha_used")}


def registered_methods() -> list[str]:
    out = subprocess.run([sys.executable, "-c", "import visfocus as vf; print(' '.join(sorted(vf.methods())))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def run(folder: Path, limit: int) -> None:
    for name in registered_methods():
        print(f"[samples_identity] {name}", flush=True)
        subprocess.run([sys.executable, "-m", "visfocus", "eval", "--tasks", TASK, "--method", name,
                        "--limit", str(limit), "--batch_size", "4", "--max_new_tokens", "8",
                        "--output_path", str(folder / name)], check=True)


def _samples(root: Path) -> dict[str, Path]:
    """{method: samples file} under a ``run`` folder."""
    return {path.relative_to(root).parts[0]: path for path in sorted(root.glob(f"*/**/samples_{TASK}.jsonl"))}


def _rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines()) if row.get("id") is not None}


def _new_value(row: dict, key: str) -> object:
    target = RENAMED.get(key, key)
    if isinstance(target, tuple):
        value = row
        for part in target:
            value = (value or {}).get(part)
        return value
    return row.get(target)


def differences(old: dict, new: dict, method: str = "") -> list[str]:
    """Fields of an old sample whose value the new sample does not carry (under its new name)."""
    out = []
    for key, value in old.items():
        if key in TIMINGS or (method, key) in DROPPED:
            continue
        if key == "method_extras":  # the old extras must all be in the new extras
            extras = new.get("extras") or {}
            out += [f"extras.{k}: {v!r} → {extras.get(k)!r}" for k, v in value.items() if extras.get(k) != v]
            continue
        got = _new_value(new, key)
        if key == "alpha_used" and value is None and got is None:
            continue
        if got != value:
            out.append(f"{key}: {value!r} → {got!r}")
    return out


def compare(old_root: Path, new_root: Path) -> int:
    old, new = _samples(old_root), _samples(new_root)
    problems = [f"{name}: no samples in {new_root}" for name in sorted(set(old) - set(new))]
    for name in sorted(set(old) & set(new)):
        old_rows, new_rows = _rows(old[name]), _rows(new[name])
        if set(old_rows) != set(new_rows):
            problems.append(f"{name}: other sample ids")
        for sample_id in sorted(set(old_rows) & set(new_rows)):
            problems += [f"{name} {sample_id} {d}" for d in differences(old_rows[sample_id], new_rows[sample_id], name)]
        print(f"{name}: {len(old_rows)} samples compared")
    for line in problems:
        print("DIFFERENT", line)
    print(f"{len(problems)} differences over {len(set(old) & set(new))} methods")
    return 1 if problems or not old else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--limit", type=int, default=24)
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.folder, args.limit)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
