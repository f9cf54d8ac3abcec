"""The package's layers: every import points down (or sideways within a subpackage), never up, and the top level
holds only the shared base. Read from the code's own imports, so a new upward import fails here."""

import ast
from pathlib import Path

# bottom to top: a module may import its own layer and the layers below it
LAYERS = [
    {"errors", "io", "plots"},
    {"config"},
    {"korean"},
    {"data"},
    {"models"},
    {"gpu"},
    {"training"},
    {"generation"},
    {"scoring"},
    {"selection"},
    {"reporting"},
    {"workflow"},
    {"stages"},
    {"cli", "__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def kdsum_imports(path: Path) -> set[str]:
    """The top-level kdsum names (subpackage or base module) a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "kdsum" else [])
        found.update(n.split(".")[1] for n in names if n.startswith("kdsum.") and len(n.split(".")) > 1)
    return found


def layer_of(src: Path, path: Path) -> str:
    parts = path.relative_to(src).parts
    return parts[0] if len(parts) > 1 else path.stem


def test_top_level_holds_only_the_shared_base(repo_root):
    top = sorted(p.name for p in (repo_root / "src/kdsum").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py", "errors.py", "io.py", "plots.py"]


def test_no_import_points_up_a_layer(repo_root):
    src = repo_root / "src/kdsum"
    upward = []
    for path in src.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == src:
            continue
        own = layer_of(src, path)
        assert own in RANK, f"{path}: a new subpackage needs its place in LAYERS"
        upward += [f"{path.relative_to(src)} -> {dep}" for dep in kdsum_imports(path) if RANK[dep] > RANK[own]]
    assert not upward, upward


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check's own control: a scoring module importing the reporting layer is caught."""
    (tmp_path / "scoring").mkdir()
    bad = tmp_path / "scoring" / "x.py"
    bad.write_text("from kdsum.reporting.summary import write_summary\nimport kdsum.io\n", encoding="utf-8")
    assert kdsum_imports(bad) == {"reporting", "io"}
    assert RANK["reporting"] > RANK[layer_of(tmp_path, bad)]
