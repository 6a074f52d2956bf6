"""``visfocus report``: a self-contained HTML page with every section, figures embedded, flips against a baseline,
and (where Chromium is installed) a page that renders to a non-blank screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visfocus.cli import main as cli_main
from visfocus.evaluate import RunConfig, evaluate
from visfocus.report import SECTIONS, build_report


@pytest.fixture(scope="module")
def runs(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    made = {}
    for name, method, args in (("base", None, {}), ("edit", "scaling_vis", {"alpha": 0.0})):
        config = RunConfig(model=str(tiny_dirs["qwen3_vl"]), tasks=["synthetic_spatial"], limit=6, batch_size=3,
                           max_new_tokens=2, output_path=str(root / name), trace="heads", method=method,
                           method_args=args)
        made[name] = Path(evaluate(config)["config"]["run_dir"])
    return made


def test_report_has_every_section_and_embedded_figures(runs):
    page = build_report(runs["edit"])
    for section in SECTIONS:
        assert f"<h3>{section}</h3>" in page
    assert page.count("data:image/png;base64,") >= 4  # shares, entropy, box overlap, calibration (+ examples)
    assert "No traces" not in page and "No boxes" not in page
    assert "src=\"http" not in page  # self-contained


def test_report_gallery_shows_the_flips_against_the_baseline(runs, tmp_path):
    baseline = tmp_path / "baseline"
    shutil.copytree(runs["base"], baseline)
    samples_file = baseline / "samples_synthetic_spatial.jsonl"
    rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
    ours = {json.loads(line)["id"]: json.loads(line) for line in
            (runs["edit"] / "samples_synthetic_spatial.jsonl").read_text().splitlines()}
    rows[0]["correct"] = not ours[rows[0]["id"]]["correct"]  # make exactly one flip
    for row in rows[1:]:
        row["correct"] = ours[row["id"]]["correct"]
    samples_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = build_report(runs["edit"], vs=baseline)
    assert len(re.findall(r"<b>(fixed|broken)</b>", page)) == 1
    card = page[page.index("<div class='card'>"):]
    assert card.count("data:image/png;base64,") == 3  # run and baseline heatmaps side by side, the run's depth strip
    assert "this run − baseline" in page  # per-layer shift of share and entropy


def test_report_cli_writes_the_file(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli_main(["report", str(runs["edit"]), "--vs", str(runs["base"]), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "not a visfocus run folder" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(build_report(runs["edit"], vs=runs["base"]))
    shot = tmp_path / "shot.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 5  # not a blank page


def test_the_header_names_the_model_also_for_the_built_in_organism(runs, tmp_path):
    assert f"<p>{runs['edit'].parents[1].name}" not in build_report(runs["edit"])  # the slug is not the name
    assert str(json.loads((runs["edit"] / "results.json").read_text())["config"]["model"]) in build_report(runs["edit"])
    organism_run = tmp_path / "organism_run"
    shutil.copytree(runs["edit"], organism_run)
    results = json.loads((organism_run / "results.json").read_text())
    results["config"]["model"] = None  # what `visfocus eval` with no --model records
    (organism_run / "results.json").write_text(json.dumps(results))
    page = build_report(organism_run)
    assert "<p>the visfocus model organism · scaling_vis" in page and "None ·" not in page
