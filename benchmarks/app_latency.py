"""Latency of the running ``visfocus app`` through its API (first result, cached repeat, redraw), and its screenshot."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from visfocus.testing.app_server import running_app
from visfocus.testing.browser import chromium_path, launch

USAGE = """examples:
  python benchmarks/app_latency.py                          # starts the app (built-in organism) on a free port
  python benchmarks/app_latency.py --reps 5 --screenshot app.png   # the site's picture: scripts/docs_figures.py
  python benchmarks/app_latency.py --url http://127.0.0.1:7860/ --first_scene 300   # an app already running

Every "first result" uses a scene the app has not answered before (a new one per repetition), so against an app
that is already running pass a --first_scene it has not seen. The plain baseline answer is measured in this process
(same model, no app, no trace) and is the unit of the "x plain" column."""

# The targets on the 2-core CPU machine.
TARGET_FIRST_S = 2.0
TARGET_REDRAW_S = 0.3


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    out = call()
    return time.perf_counter() - started, out


def measure(url: str, vlm, records, reps: int, first_scene: int, folder: Path) -> tuple[dict[str, list[float]], float]:
    """Per repetition: the first result of baseline, of adaptvis and of both (each on a scene not answered before),
    the cached repeat of the last, a redraw at another layer; and the plain baseline answer in this process."""
    from gradio_client import Client, handle_file

    from visfocus.app.compute import MAX_NEW_TOKENS

    client = Client(url, verbose=False)  # one client: one session, so /redraw draws this client's last comparison

    def compare(index: int, methods: list[str]) -> dict:
        record = records[index]
        path = folder / f"scene-{index}.png"
        if not path.exists():
            record.image.save(path)
        out = client.predict(handle_file(str(path)), record.question, ", ".join(record.options), record.gold or "",
                             json.dumps(methods), "{}", api_name="/compare")
        if set(out) != set(methods):
            raise SystemExit(f"/compare answered {sorted(out)} for {methods}")
        return out

    def redraw(layer: int) -> tuple:
        out = client.predict(layer, "mean", 0, "jet", 0.5, 0, api_name="/redraw")
        if out[0] is None:
            raise SystemExit("/redraw drew no baseline heatmap")
        return out

    def plain(index: int):
        record = records[index]
        return vlm.answer(record.image, record.question, max_new_tokens=MAX_NEW_TOKENS, options=list(record.options))

    # warm-up (not counted): the app's and this process's first request pays one-off costs
    warm_s, _ = timed(lambda: compare(first_scene - 1, ["baseline", "adaptvis"]))
    redraw(1)
    plain(first_scene - 1)
    rows: dict[str, list[float]] = {k: [] for k in ("plain", "baseline", "adaptvis", "both", "cached", "redraw")}
    for rep in range(reps):
        scene = first_scene + 3 * rep
        rows["plain"].append(timed(partial(plain, scene))[0])
        rows["baseline"].append(timed(partial(compare, scene, ["baseline"]))[0])
        rows["adaptvis"].append(timed(partial(compare, scene + 1, ["adaptvis"]))[0])
        rows["both"].append(timed(partial(compare, scene + 2, ["baseline", "adaptvis"]))[0])
        rows["cached"].append(timed(partial(compare, scene + 2, ["baseline", "adaptvis"]))[0])
        # layers 0, 1, 0, ...: each redraw shows another layer than the one before (the warm-up drew layer 1)
        rows["redraw"].append(timed(partial(redraw, rep % 2))[0])
        print(f"  rep {rep + 1}/{reps} done (scenes {scene}..{scene + 2})", flush=True)
    return rows, warm_s


def report(rows: dict[str, list[float]]) -> str:
    plain = statistics.median(rows["plain"])
    labels = [("plain", "plain baseline answer (in this process, no app)", None),
              ("baseline", "first result: baseline, fresh scene", TARGET_FIRST_S),
              ("adaptvis", "first result: adaptvis, fresh scene", TARGET_FIRST_S),
              ("both", "first result: baseline + adaptvis, fresh", TARGET_FIRST_S),
              ("cached", "cached repeat: baseline + adaptvis", None),
              ("redraw", "redraw after a layer move (/redraw)", TARGET_REDRAW_S)]
    lines = [f"{'what':<50}{'median s':>9}{'min s':>8}{'max s':>8}{'x plain':>9}   target"]
    for key, label, target in labels:
        values = rows[key]
        median = statistics.median(values)
        mark = "" if target is None else f"<= {target:g} s: {'met' if median <= target else 'MISSED'}"
        line = f"{label:<50}{median:>9.3f}{min(values):>8.3f}{max(values):>8.3f}{median / plain:>9.2f}   {mark}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def screenshot(url: str, record, path: Path, folder: Path, width: int = 1500, height: int = 1350) -> None:
    """The page after comparing baseline and adaptvis (the default methods) on one scene, at one viewport."""
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        raise SystemExit("--screenshot needs Chromium on PATH (Debian: apt-get install chromium)")
    upload = folder / "screenshot-scene.png"
    record.image.save(upload)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(90_000)
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#vf-run", state="visible")
            page.locator("#vf-image input[type=file]").set_input_files(str(upload))
            page.wait_for_selector("#vf-image img", state="visible")
            page.locator("#vf-question textarea").fill(record.question)
            page.get_by_label("answer options (comma-separated, optional)").fill(", ".join(record.options))
            page.get_by_label("gold answer (optional: marks right/wrong and flips)").fill(record.gold or "")
            page.locator("#vf-run").click()
            page.wait_for_function("""() => [...document.querySelectorAll('.vf-heatmap img')]
                .filter(img => img.src && img.complete && img.naturalWidth > 0).length >= 2""")
            # the plots drawn after the heatmaps (the layer x head mass is the last): every picture decoded
            page.wait_for_function("""() => [...document.querySelectorAll('img')].every(img => img.complete)
                && [...document.querySelectorAll('img')].filter(img => img.naturalWidth > 0).length >= 6""")
            page.wait_for_timeout(500)  # let the last layout settle
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app already running (default: start one in a subprocess)")
    parser.add_argument("--model", help="the app's model; also the plain baseline's (default: the built-in organism)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--first_scene", type=int, default=100, help="scenes_test index of the first fresh scene")
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the page after a comparison")
    parser.add_argument("--scene", type=int, default=0, help="the scenes_test index the screenshot compares on")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    import torch

    import visfocus as vf
    from visfocus.organism import organism_path

    records = list(vf.task("scenes_test"))
    if not 1 <= args.first_scene or args.first_scene + 3 * args.reps > len(records):
        raise SystemExit(f"--first_scene must leave room for {3 * args.reps} scenes among {len(records)}")
    vlm = vf.load(str(organism_path()) if args.model is None else args.model)
    with tempfile.TemporaryDirectory(prefix="visfocus-app-latency-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        url = args.url
        if url is None:  # the app's torch threads follow OMP_NUM_THREADS (1 when unset)
            model_args = ("--model", args.model) if args.model else ()
            url = stack.enter_context(running_app(folder / "app.log", *model_args,
                                                  threads=int(os.environ.get("OMP_NUM_THREADS", "1"))))
        print(f"visfocus app latency through gradio_client (/compare, /redraw); model: "
              f"{args.model or 'the built-in organism'}; app: {'started here' if args.url is None else url}")
        print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, this process {torch.get_num_threads()} "
              f"thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (the app's too when "
              f"started here); {args.reps} reps, fresh scenes {args.first_scene}.."
              f"{args.first_scene + 3 * args.reps - 1} of scenes_test, one new per first result", flush=True)
        rows, warm_s = measure(url, vlm, records, args.reps, args.first_scene, folder)
        print(f"\nwarm-up (the app's first request, baseline + adaptvis, not counted): {warm_s:.3f} s\n")
        print(report(rows))
        if args.screenshot:
            screenshot(url, records[args.scene], args.screenshot, folder)
            print(f"\nscreenshot: {args.screenshot} (scene {records[args.scene].id}, baseline + adaptvis)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
