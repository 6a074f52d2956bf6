"""The documentation site's pictures: scripts/docs_figures.py (which makes them from the organism, about a minute on
2 cores, so not run here) parses its flags, every picture it makes is committed under docs/assets/, and every image
a page of the site links under assets/ is a file of the repository."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_figures.py"
DOCS = ROOT / "docs"
# Markdown images ![alt](path "title") and HTML <img src="path"> whose path goes through an assets/ folder.
IMAGE_LINK = re.compile(r"""!\[[^\]]*\]\(\s*<?([^)\s>]*assets/[^)\s>]+)|<img\b[^>]*\bsrc=["']([^"']*assets/[^"']+)""")


def script():
    spec = importlib.util.spec_from_file_location("docs_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_parses():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flag in ("--out", "--limit", "--scene", "--keep"):
        assert flag in done.stdout


def test_every_picture_the_script_makes_is_committed():
    made = [DOCS / "assets" / "scene.png", *(DOCS / "assets" / "figures" / name for name in script().FIGURES)]
    missing = [str(path.relative_to(ROOT)) for path in made if not path.is_file()]
    assert not missing, f"run `python scripts/docs_figures.py` and commit: {missing}"
    for path in made:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


def test_every_image_a_page_links_under_assets_exists():
    links = []
    for page in sorted(DOCS.rglob("*.md")):
        for match in IMAGE_LINK.finditer(page.read_text(encoding="utf-8")):
            target = (match.group(1) or match.group(2)).split("#")[0]
            links.append((page, target, (page.parent / target).resolve()))
    broken = [f"{page.relative_to(ROOT)}: {target}" for page, target, path in links
              if not path.is_file() or not path.is_relative_to(ROOT)]
    assert not broken, "image links to missing files:\n" + "\n".join(broken)
