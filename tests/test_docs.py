"""The README's shell commands run as written, in a fresh copy of the repository.

Fenced ```bash blocks run, each command through bash in a copy of the tracked files. A block whose info string
carries a tag (```bash gpu, ```bash cluster, ```bash network) needs what the test machine lacks: it is only
parsed. A ```yaml block whose first line is `# NAME.yaml` is written to the copy first (the overlays the commands
name). Commands that would do real work run in their dry-run form, the same command with one flag added:
`snakemake -n`, `pip install --dry-run --no-index --no-build-isolation` (offline, installs nothing),
`pytest --collect-only`. Any other program must be cheap enough to run as written, or the test names the command
to tag.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.M | re.S)

# Prefix -> its dry-run form; a prefix mapped to itself runs as written.
DRY_RUN = {
    "python3 -m pip install": "python3 -m pip install --dry-run --no-index --no-build-isolation",
    "python3 -m pytest": "python3 -m pytest --collect-only -q",
    "snakemake": "snakemake -n",
    "kdsum": "kdsum",
}
# Dry runs load the whole workflow (snakemake), resolve every pin (pip) or import every test (pytest): 5-25 CPU s each
SLOW = ("python3 -m pip", "python3 -m pytest", "snakemake")


def fenced_blocks(text: str) -> list[tuple[str, list[str], str]]:
    """(language, tags, body) of every fenced block."""
    return [(lang, tags.split(), body) for lang, tags, body in FENCE.findall(text)]


def readme_commands(text: str) -> list[str]:
    """The untagged bash blocks' commands, one per line (no continuation lines in the README)."""
    lines = [
        ln.strip()
        for lang, tags, body in fenced_blocks(text)
        if lang == "bash" and not tags
        for ln in body.splitlines()
    ]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def overlay_files(text: str) -> dict[str, str]:
    """yaml blocks named by their first line (`# my.yaml`)."""
    named = {}
    for lang, _, body in fenced_blocks(text):
        first = body.splitlines()[0] if body else ""
        if lang == "yaml" and re.fullmatch(r"# [\w.-]+\.yaml", first):
            named[first[2:]] = body
    return named


def dry_run_form(command: str) -> str:
    """Each `&&` part with its dry-run flag; a part no prefix knows raises, naming it."""
    return " && ".join(_dry_part(part.strip()) for part in command.split("&&"))


def _dry_part(part: str) -> str:
    for prefix, dry in DRY_RUN.items():
        if part == prefix or part.startswith(prefix + " "):
            return dry + part[len(prefix) :]
    raise AssertionError(f"README command {part!r}: give it a dry-run form in tests/test_docs.py or tag its block")


def copy_tracked(dst: Path) -> Path:
    """The files `git ls-files` lists: what a fresh clone has."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    return dst


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    work = copy_tracked(tmp_path_factory.mktemp("readme") / "kdsum")
    for name, body in overlay_files((ROOT / "README.md").read_text()).items():
        (work / name).write_text(body)
    return work


def run_in(work: Path, command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(work / "src")}  # the copy's code, also for kdsum inside Snakemake
    return subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300)


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def test_the_readme_has_the_two_quick_start_commands():
    bare = [c.split(" #")[0].strip() for c in COMMANDS]
    assert 'python3 -m pip install -e ".[dev]" && snakemake --cores 2 results/summary.csv' in bare
    assert 'python3 -m pip install -e ".[dev]" && python3 -m pytest' in bare


def test_the_dry_run_form_adds_one_flag_and_refuses_unknown_programs():
    assert dry_run_form("snakemake --cores 2 x && kdsum --help") == "snakemake -n --cores 2 x && kdsum --help"
    assert dry_run_form("python3 -m pytest") == "python3 -m pytest --collect-only -q"
    with pytest.raises(AssertionError, match="rm -rf results"):
        dry_run_form("rm -rf results")


def test_tagged_blocks_and_named_overlays_are_read():
    text = (
        "```bash gpu\nsnakemake --cores 8\n```\n```bash\nkdsum --help  # list\n```\n```yaml\n# a.yaml\nrun: {}\n```\n"
    )
    assert readme_commands(text) == ["kdsum --help  # list"]
    assert overlay_files(text) == {"a.yaml": "# a.yaml\nrun: {}\n"}


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if c.startswith(SLOW) else c for c in COMMANDS],
)
def test_readme_command_runs(clone, command):
    proc = run_in(clone, dry_run_form(command))
    assert proc.returncode == 0, f"{dry_run_form(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_the_snakefile_header_commands_run(clone):
    header = [ln[1:].strip() for ln in (ROOT / "Snakefile").read_text().splitlines() if ln.startswith("#   snakemake")]
    assert header
    for command in header:
        proc = run_in(clone, dry_run_form(command.split("  (")[0]))
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
