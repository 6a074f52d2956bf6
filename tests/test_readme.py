"""The README's two commands exist, CI runs exactly the README's test command, and every command line the README
shows parses with the CLI as it is."""

import shlex
from pathlib import Path

import pytest

from visfocus.cli import build_parser
from visfocus.interventions import parse_method_args

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


def readme_commands(text: str) -> list[list[str]]:
    """Every ``visfocus ...`` command line in the README's bash blocks, as argv (continuations joined, comments and
    the ``&&``-chained install steps before it dropped)."""
    commands = []
    for block in _bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and argv[0] == "visfocus":
                    commands.append(argv[1:])
    return commands


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def test_the_readme_shows_every_sub_command():
    shown = {argv[0] for argv in COMMANDS}
    assert {"eval", "sweep", "compare", "list", "bench", "report", "heatmap", "finetune", "profile-layers"} <= shown


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv)[:60])
def test_every_readme_command_parses(argv, capsys):
    """Parsing only (no model loads): the README and the CLI cannot drift apart. Method arguments are read as the
    command would read them."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`visfocus {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
    if getattr(args, "method", None) not in (None, "baseline"):
        method_args = getattr(args, "method_args", None) or ""
        parse_method_args(args.method, method_args)


def test_a_drifted_command_is_caught(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(readme_commands("```bash\nvisfocus bench --no_such_flag 4\n```")[0])


def _family_rows(text: str) -> dict[str, str]:
    """The README's supported-models table: family → its row."""
    table = text.split("<!-- families:")[1].split("\n\n")[0]
    return {row.split("`")[1]: row for row in table.splitlines()[1:] if row.startswith("| `")}


def test_the_readme_lists_every_family_with_its_checkpoint_and_a_command():
    """One table row and one pasteable command per registered adapter family, with the family's smallest checkpoint
    (declared once, on the adapter) and its model types; no row for a family that is not registered."""
    from visfocus.models import ADAPTERS

    text = (ROOT / "README.md").read_text()
    rows = _family_rows(text)
    families = {adapter.family: adapter for adapter in ADAPTERS.values()}
    assert set(rows) == set(families)
    commands = next(b for b in _bash_blocks(text) if b.startswith("# families:")).splitlines()[1:]
    for family, adapter in families.items():
        assert f"`{adapter.checkpoint}`" in rows[family]
        assert all(f"`{model_type}`" in rows[family] for model_type in adapter.model_types)
        assert any(line.startswith(f"visfocus eval --model {adapter.checkpoint} ") for line in commands)
