"""The package layers point down: no headscope package imports one above it (docs/architecture.md).

Every ``import`` in ``headscope/`` is read from the source (top-level and inside functions, so a
lazy import cannot hide a cycle) and mapped to the package it names. The layers below are the
table in docs/architecture.md; a test there checks the two agree.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "headscope"

# bottom first; a package may import only packages of strictly lower layers
LAYERS: list[tuple[str, ...]] = [
    ("errors", "version"),
    ("params", "progress", "datafiles", "heads_text", "cache", "stats"),
    ("results", "tasks", "toy"),
    ("models",),
    ("trace",),
    ("patching",),
    ("interventions", "generation"),
    ("lens", "safety", "kv"),
    ("methods",),
    ("plan",),
    ("scale",),
    ("analyzers",),
    ("circuits",),
    ("plots",),
    ("report",),
    ("verify",),
    ("recipes_runner",),
    ("cli",),
    ("__init__", "__main__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str:
    """``headscope.trace.tracer`` -> ``trace``; ``headscope`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """Every headscope module ``path`` imports, with the line (relative imports resolved)."""
    package = root / "headscope"
    mod = module_name(path, root)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "headscope":  # `from headscope import plots` names a subpackage or the root
                found += [(f"headscope.{a.name}" if (package / a.name).exists() or (package / f"{a.name}.py").exists()
                           else "headscope", node.lineno) for a in node.names]
            else:
                found.append((target, node.lineno))
    return [(t, line) for t, line in found if t == "headscope" or t.startswith("headscope.")]


def upward_imports(root: Path = ROOT) -> list[str]:
    """``file:line: a -> b`` for every import of a package at the same or a higher layer."""
    bad = []
    for path in sorted((root / "headscope").rglob("*.py")):
        src = unit_of(module_name(path, root))
        for target, line in imports_of(path, root):
            dst = unit_of(target)
            if dst == src:
                continue
            if src not in LAYER or dst not in LAYER:
                bad.append(f"{path.relative_to(root)}:{line}: {src} -> {dst} (a package not in LAYERS)")
            elif LAYER[dst] >= LAYER[src]:
                bad.append(f"{path.relative_to(root)}:{line}: {src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})")
    return bad


def test_every_import_points_down():
    assert upward_imports() == []


def test_every_package_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYER), sorted(units - set(LAYER))


def test_the_check_catches_an_upward_import(tmp_path):
    """Put an upward import back (a tracer module importing the analyzers) and watch it fail."""
    fake = tmp_path / "headscope"
    (fake / "trace").mkdir(parents=True)
    (fake / "analyzers").mkdir()
    (fake / "trace" / "__init__.py").write_text("")
    (fake / "trace" / "x.py").write_text("def f():\n    from headscope.analyzers import registry\n")
    (fake / "analyzers" / "__init__.py").write_text("from headscope.trace import x\n")
    bad = upward_imports(tmp_path)
    assert bad == ["headscope/trace/x.py:2: trace (layer 4) imports analyzers (layer 11)"]


def test_architecture_doc_lists_the_same_layers():
    """docs/architecture.md's layer table (``| N | `pkg`, `pkg` | ...``) is this test's LAYERS."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", text, flags=re.MULTILINE)
    doc = [tuple(re.findall(r"`([^`]+)`", names)) for _, names in rows]
    assert doc == LAYERS

