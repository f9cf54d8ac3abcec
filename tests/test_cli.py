"""The command layer: stages are found from their modules (one description each), help loads no library."""

import ast
import re
import subprocess
import sys

from kdsum import cli


def stage_modules(root):
    return sorted(p.stem.replace("_", "-") for p in (root / "src/kdsum/stages").glob("*.py") if p.name[0] != "_")


def test_stages_are_the_modules_with_one_line_summaries(repo_root):
    listed = cli.stages()
    assert sorted(listed) == stage_modules(repo_root)
    for name, summary in listed.items():
        assert summary and len(summary) <= 110 and not summary.startswith("`"), name
        module = repo_root / "src/kdsum/stages" / f"{name.replace('-', '_')}.py"
        assert "def main(" in module.read_text(encoding="utf-8"), name


def test_every_rule_command_is_a_stage(repo_root):
    commands = set()
    for smk in (repo_root / "rules").glob("*.smk"):
        commands.update(re.findall(r'"kdsum ([a-z-]+)', smk.read_text(encoding="utf-8")))
    assert commands and commands <= set(cli.stages())


def test_help_imports_no_library_and_unknown_stage_exits_2(repo_root):
    probe = "import sys; from kdsum import cli; cli.main(['--help']); print(sorted(m for m in sys.modules if m.startswith(('kdsum.', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "stages:" in out and out.strip().splitlines()[-1] == "['kdsum.cli', 'kdsum.errors']"
    bad = subprocess.run([sys.executable, "-m", "kdsum", "no-such-stage"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("error: unknown stage 'no-such-stage'")


def test_scripts_entry_point_runs_a_stage(repo_root):
    res = subprocess.run(
        [sys.executable, str(repo_root / "scripts/kdsum.py"), "compare", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "usage: kdsum compare" in res.stdout


def test_package_inits_hold_no_code(repo_root):
    """Every __init__.py is a docstring (and kdsum's version): code deps leave them out (kdsum.workflow.deps)."""
    for path in (repo_root / "src/kdsum").rglob("__init__.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        kinds = {type(node).__name__ for node in body[1:]}
        assert isinstance(body[0], ast.Expr) and kinds <= {"Assign"}, path
