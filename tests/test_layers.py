"""The layering of docs/ARCHITECTURE.md holds: a module imports only its own layer and the
layers above it, no stage imports another stage, and importing the library never imports the CLI;
no function is longer than a screen, and no module is a grab-bag named common / utils."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "affinitynet"

# top to bottom, as in docs/ARCHITECTURE.md
LAYERS = ["errors", "conventions", "stage_table", "algorithms", "config", "artifacts", "distributed", "parallel",
          "data", "records", "models", "weights", "evaluation", "diagnostics", "visualize", "console", "per_image", "report", "inference",
          "training", "stages", "pipeline", "api", "cli"]
MAX_FUNCTION_LINES = 50


def _layer(module: str) -> str:
    """'affinitynet.data.voc' -> 'data'; 'affinitynet.stages.make_cam' -> 'stages'."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    """Every affinitynet module ``path`` imports, lazily or not (from-imports of names in a
    package count as the submodule when one exists)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("affinitynet.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("affinitynet"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / Path(*sub.split("."))
                found.add(sub if as_path.with_suffix(".py").exists() or as_path.is_dir() else node.module)
    return {m for m in found if m.count(".") >= 1}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith("__init__") or name.endswith("__main__"):
            continue
        yield name, path


def test_every_module_is_in_a_layer():
    assert {_layer(name) for name, _ in _modules()} <= set(LAYERS)


def test_imports_go_up_the_layers_only():
    wrong = []
    for name, path in _modules():
        own = LAYERS.index(_layer(name))
        for imported in _imports(path):
            if LAYERS.index(_layer(imported)) > own:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_no_stage_imports_another_stage():
    wrong = [f"{name} imports {imported}" for name, path in _modules() if name.startswith("affinitynet.stages.")
             for imported in _imports(path) if imported.startswith("affinitynet.stages")]
    assert not wrong, wrong


def test_importing_the_library_does_not_import_the_cli():
    code = ("import sys, affinitynet.pipeline, affinitynet.training, affinitynet.evaluation; "
            "print('affinitynet.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_no_grab_bag_module():
    assert not [name for name, _ in _modules() if name.rsplit(".", 1)[-1] in ("common", "utils", "helpers", "misc")]
