"""The README's two commands exist, CI runs exactly the README's test command, the README stays short and lists every
family. (Every command the README and the site show parses with the CLI: tests/test_docs_pages.py.)"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    parts = text.split("```bash\n")[1:]
    return [p.split("```")[0].strip() for p in parts]


def test_ci_runs_the_readme_test_command():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    test_command = next(b for b in blocks if b.endswith("pytest"))
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_command_installs_torch_first_and_runs_eval():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert "pip install torch==2.13.0 && pip install -e . && visfocus eval" in blocks


def test_the_readme_fits_a_screen():
    """What visfocus is, the two commands, a short example and two tables; the rest lives in the site (docs/)."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def _family_rows(text: str) -> dict[str, str]:
    """The README's supported-models table: family → its row."""
    table = text.split("<!-- families:")[1].split("\n\n")[0]
    return {row.split("`")[1]: row for row in table.splitlines()[1:] if row.startswith("| `")}


def test_the_readme_lists_every_family_with_its_checkpoint():
    """One table row per registered adapter family, with the family's smallest checkpoint (declared once, on the
    adapter) and its model types; no row for a family that is not registered."""
    from visfocus.models import ADAPTERS

    text = (ROOT / "README.md").read_text()
    rows = _family_rows(text)
    families = {adapter.family: adapter for adapter in ADAPTERS.values()}
    assert set(rows) == set(families)
    for family, adapter in families.items():
        assert f"`{adapter.checkpoint}`" in rows[family]
        assert all(f"`{model_type}`" in rows[family] for model_type in adapter.model_types)
