"""Every picture of the documentation site, made from the built-in model organism and its rendered scenes task.

    python scripts/docs_figures.py                    # writes docs/assets/scene.png and docs/assets/figures/*.png
    python scripts/docs_figures.py --out /tmp/assets --limit 16 --keep /tmp/figures-work

Everything runs through the ``visfocus`` command line (``python -m visfocus.cli``, from this repository's ``src``)
or the public modules, in a temporary folder, on the CPU; about a minute on 2 cores. The pictures:

- ``scene.png``: one input scene of ``scenes_test`` (``--scene``, default ``test-1``: a yellow circle on a black
  shelf, which the organism answers "right", the pages' example of a rare relation gone wrong); its question and the
  organism's answer are printed.
- ``figures/heatmap.png``: ``visfocus heatmap`` of that scene at layers 1 and 2, the baseline above and
  ScalingVis (α = 2, the top of its search grid, chosen to make the edit visible, not tuned) below.
- ``figures/layer-shares.png``: per-layer image / text / special shares of the last prompt row's attention, over the
  first ``--limit`` test scenes, baseline beside ScalingVis (``analysis.attention.share_by_layer`` drawn by
  ``analysis.figures.share_by_layer_figure``, from the traces of ``visfocus eval --trace mean``).
- ``figures/profile-layers.png``: the per-layer mean AUROC that ``visfocus profile-layers`` writes (VEA's layer
  profile, 100 ``scenes_dev`` samples), drawn by ``analysis.figures.line_figure`` (the command writes JSON only).
- ``figures/report.png``: the top of the ``visfocus report RUN --vs BASELINE`` page of those two runs, in headless
  Chromium.
- ``figures/app-compare.png``: ``visfocus app`` after comparing the baseline and AdaptVis on the scene, taken by
  ``benchmarks/app_latency.py``'s ``screenshot``.
- ``figures/study-*.png``: every figure of ``visfocus study`` on the organism (all of dev and test: about 5 minutes;
  ``--study DIR`` reuses, or resumes, a study folder instead of a new one).

Needs the ``app`` and ``dev`` extras (Gradio, Playwright) and a Chromium on PATH (Debian: ``apt-get install
chromium``). Each PNG is at most 1200 px wide and about 300 KB (larger ones are reduced to 256 colours).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))  # this tree's visfocus, also for the commands below (PYTHONPATH)

from visfocus.study_report import FIGURES as STUDY_FIGURES  # noqa: E402  (this tree's visfocus, above)

FIGURES = ("heatmap.png", "layer-shares.png", "profile-layers.png", "report.png", "app-compare.png",
           *(f"study-{name}.png" for name in STUDY_FIGURES))
METHOD, METHOD_ARGS, METHOD_LABEL = "scaling_vis", "alpha=2.0", "scaling_vis (α = 2)"
HEATMAP_LAYERS = "1,2"  # of the organism's 4: around the middle layer (2), where the answer row looks at the objects
PROFILE_N = 100
MAX_WIDTH = 1200  # px
MAX_BYTES = 300_000
REPORT_VIEWPORT = (1200, 1000)  # the top of the report page: header, metrics, per relation, attention by layer
APP_VIEWPORT = (1200, 1350)

STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def visfocus(*argv: str, cwd: Path) -> str:
    """Run ``visfocus ARGV`` (as ``python -m visfocus.cli``) in ``cwd``; print the command and its stdout."""
    shown = " ".join(arg if arg and " " not in arg and "?" not in arg else repr(arg) for arg in argv)
    say(f"$ visfocus {shown}")
    done = subprocess.run([sys.executable, "-m", "visfocus.cli", *argv], cwd=cwd, env=child_env(), text=True,
                          capture_output=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"visfocus {argv[0]} failed with code {done.returncode}")
    for line in done.stdout.strip().splitlines():
        print(f"    {line}")
    return done.stdout


def app_latency():
    """benchmarks/app_latency.py as a module (its ``screenshot`` and Chromium flags are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("app_latency", ROOT / "benchmarks" / "app_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_png(image, path: Path) -> Path:
    """Save a PIL image as PNG, at most MAX_WIDTH px wide, reduced to 256 colours when over MAX_BYTES."""
    from PIL import Image

    image = image.convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > MAX_BYTES:
        buffer = io.BytesIO()
        image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buffer, format="PNG",
                                                                                          optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    say(f"wrote {path} ({image.width}×{image.height} px, {buffer.tell() // 1024} KB)")
    return path


def side_by_side(images, vertical: bool = False, gap: int = 12):
    """Images pasted in a row (or a column) on white, with a gap between them."""
    from PIL import Image

    images = [im.convert("RGB") for im in images]
    if vertical:
        size = (max(im.width for im in images), sum(im.height for im in images) + gap * (len(images) - 1))
    else:
        size = (sum(im.width for im in images) + gap * (len(images) - 1), max(im.height for im in images))
    canvas, offset = Image.new("RGB", size, "white"), 0
    for im in images:
        canvas.paste(im, (0, offset) if vertical else (offset, 0))
        offset += (im.height if vertical else im.width) + gap
    return canvas


def png(fig):
    from PIL import Image

    from visfocus.analysis.figures import figure_to_png_bytes

    return Image.open(io.BytesIO(figure_to_png_bytes(fig)))


def pick_scene(scene_id: str):
    """The scenes_test record ``scene_id``, with the organism's answer (the app's options) printed."""
    import visfocus as vf
    from visfocus.organism import organism_path

    records = {record.id: record for record in vf.task("scenes_test")}
    if scene_id not in records:
        raise SystemExit(f"--scene {scene_id!r} is not a scenes_test id (test-0 … test-{len(records) - 1})")
    record = records[scene_id]
    vlm = vf.load(str(organism_path()))
    answer = vlm.answer(record.image, record.question, max_new_tokens=8, options=list(record.options))
    say(f"scene {scene_id}: {record.question!r} → {answer.text!r} (gold {record.gold!r}, confidence "
        f"{answer.confidence:.2f})")
    return record


def heatmaps(record, scene_png: str, model: str, work: Path, out: Path) -> None:
    """``visfocus heatmap`` of the scene, baseline above the method."""
    from PIL import Image

    panels = []
    for name, extra in (("baseline", ()), (METHOD, ("--method", METHOD, "--method_args", METHOD_ARGS))):
        path = f"heatmap-{name}.png"
        visfocus("heatmap", "--model", model, "--image", scene_png, "--question", record.question,
                 "--layers", HEATMAP_LAYERS, "--max_new_tokens", "4", *extra, "--out", path, cwd=work)
        panels.append(Image.open(work / path))
    write_png(side_by_side(panels, vertical=True, gap=24), out)


def evaluations(limit: int, work: Path) -> tuple[Path, Path]:
    """``visfocus eval --trace mean`` of the baseline and the method on the first ``limit`` test scenes."""
    for extra in ((), ("--method", METHOD, "--method_args", METHOD_ARGS)):
        visfocus("eval", "--trace", "mean", "--limit", str(limit), "--seed", "0", "--output_path", "runs", *extra,
                 cwd=work)
    runs = Path("runs") / "organism"  # relative to work: the report page shows these paths
    edited = next(path.name for path in (work / runs).iterdir() if path.name.startswith(METHOD))
    return runs / "baseline", runs / edited


def layer_shares(base: Path, edited: Path, work: Path, out: Path) -> None:
    """Per-layer attention shares of the two runs' traces, side by side."""
    from visfocus.analysis.attention import share_by_layer
    from visfocus.analysis.figures import share_by_layer_figure
    from visfocus.compare import load_run
    from visfocus.tracefile import load_traces

    panels = []
    for run, label in ((work / base, "baseline"), (work / edited, METHOD_LABEL)):
        _, samples = load_run(run)
        shares = share_by_layer(load_traces(run, "scenes_test"), samples["scenes_test"])["all"]
        title = f"{label}: attention share by layer ({shares['n']} test scenes)"
        panels.append(png(share_by_layer_figure(shares["mean"], shares["std"], title=title)))
    write_png(side_by_side(panels, gap=0), out)  # two 600 px figures: 1200 px


def profile(model: str, work: Path, out: Path) -> None:
    """``visfocus profile-layers`` on scenes_dev, its per-layer AUROC drawn as a line."""
    from visfocus.analysis.figures import line_figure

    visfocus("profile-layers", "--model", model, "--task", "scenes_dev", "--n", str(PROFILE_N), "--out",
             "profile.json", cwd=work)
    result = json.loads((work / "profile.json").read_text())
    title = (f"visfocus profile-layers, {result['n_samples']} scenes_dev samples\n"
             f"VEA's layers (top {result['top_fraction']:g}): {result['layers']}")
    fig = line_figure({"mean AUROC: attention vs evidence boxes": result["auroc_per_layer"]}, "layer", title)
    fig.axes[0].set_ylabel("AUROC")
    fig.axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)  # chance
    write_png(png(fig), out)


def report(base: Path, edited: Path, work: Path, out: Path) -> None:
    """``visfocus report RUN --vs BASELINE``, the top of the page in headless Chromium."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from visfocus.testing.browser import launch

    visfocus("report", str(edited), "--vs", str(base), "--out", "report.html", cwd=work)
    width, height = REPORT_VIEWPORT
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto((work / "report.html").as_uri(), wait_until="load")
            page.wait_for_function("() => [...document.images].every(img => img.complete && img.naturalWidth > 0)")
            # down to the first row of the per-layer plots (the page's second picture), at most the viewport
            bottom = page.evaluate("() => document.images.length > 1 ? document.images[1].getBoundingClientRect()"
                                   ".bottom : innerHeight")
            shot = page.screenshot(clip={"x": 0, "y": 0, "width": width, "height": min(height, bottom + 16)})
        finally:
            browser.close()
    write_png(Image.open(io.BytesIO(shot)), out)


def app_compare(record, work: Path, out: Path, latency) -> None:
    """The app (started here, the organism) after comparing baseline and AdaptVis on the scene."""
    from PIL import Image

    from visfocus.testing.app_server import running_app

    say("starting `visfocus app` (the organism) and comparing baseline and adaptvis in headless Chromium")
    shot = work / "app-compare-full.png"
    with running_app(work / "app.log", threads=int(child_env()["OMP_NUM_THREADS"])) as url:
        latency.screenshot(url, record, shot, work, width=APP_VIEWPORT[0], height=APP_VIEWPORT[1])
    write_png(Image.open(shot), out)


def study(folder: Path, work: Path, figures: Path) -> None:
    """``visfocus study --out FOLDER`` (resumable: a finished study only redraws), its figures copied as study-*."""
    from PIL import Image

    visfocus("study", "--out", str(folder), cwd=work)
    for name in STUDY_FIGURES:
        write_png(Image.open(folder / "figures" / f"{name}.png"), figures / f"study-{name}.png")


def chromium() -> None:
    from visfocus.testing.browser import chromium_path

    if chromium_path() is None:
        raise SystemExit("needs Chromium on PATH (Debian: apt-get install chromium)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "assets",
                        help="assets folder: scene.png and figures/*.png go there (default: docs/assets)")
    parser.add_argument("--limit", type=int, default=32, help="test scenes per evaluation (default 32)")
    parser.add_argument("--scene", default="test-1", help="the scenes_test id shown (default test-1)")
    parser.add_argument("--study", type=Path, help="the `visfocus study` folder to use or resume (default: a new one)")
    parser.add_argument("--keep", type=Path,
                        help="work in this new (or empty) folder and keep it: runs, report.html, app.log")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    os.environ.update({k: v for k, v in child_env().items() if k != "PYTHONPATH"})
    chromium()  # fail before any work when the browser is missing
    out, figures = args.out.resolve(), args.out.resolve() / "figures"

    from visfocus.organism import organism_path

    model = str(organism_path())
    say(f"model: the built-in organism ({model}); method shown: {METHOD} {METHOD_ARGS}; out: {out}")
    latency = app_latency()
    with tempfile.TemporaryDirectory(prefix="visfocus-docs-figures-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        record = pick_scene(args.scene)
        print(f"    question: {record.question}")
        scene_png = "scene.png"
        record.image.save(work / scene_png)
        write_png(record.image, out / "scene.png")
        heatmaps(record, scene_png, model, work, figures / "heatmap.png")
        base, edited = evaluations(args.limit, work)
        layer_shares(base, edited, work, figures / "layer-shares.png")
        report(base, edited, work, figures / "report.png")
        profile(model, work, figures / "profile-layers.png")
        app_compare(record, work, figures / "app-compare.png", latency)
        study(args.study.resolve() if args.study else work / "study", work, figures)
    missing = [name for name in FIGURES if not (figures / name).is_file()]
    if missing:
        raise SystemExit(f"not written: {missing}")
    say(f"done: {out / 'scene.png'} and {len(FIGURES)} figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
