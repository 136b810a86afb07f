"""The package's layers (docs/architecture.md): imports go one way, and sit at the top of each module."""
import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "resnetlab"

# Lower layers first; a module may import only modules of a strictly lower layer.
LAYERS = [
    {"__init__"},                                            # the package root: lazy, imports nothing
    {"io", "config", "schedule", "images"},                  # leaves
    {"blocks", "datasets", "plots"},
    {"models", "stream", "runtime"},
    {"fused", "weights"},
    {"evaluate", "sources"},
    {"train"},
    {"analysis", "summary", "evaluate_cli"},
    {"landscape", "report"},
    {"study"},
    {"cli"},
    {"__main__"},
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def _package_imports(tree):
    """(module imported, node) for every ``from . import x`` / ``from .x import y`` in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            targets = [node.module] if node.module else [a.name for a in node.names]
            for t in targets:
                yield ("__init__" if t in (None, "__version__") else t), node


def test_every_module_has_a_layer():
    assert {p.stem for p in SRC.glob("*.py")} == set(RANK)


def test_imports_go_down_the_layers():
    wrong = []
    for path in SRC.glob("*.py"):
        for target, node in _package_imports(ast.parse(path.read_text())):
            if RANK[target] >= RANK[path.stem] and path.stem != "__init__":
                wrong.append(f"{path.stem} imports {target} (line {node.lineno})")
    assert wrong == []


def test_package_imports_sit_at_the_top():
    """No function-local imports of the package's own modules (cli imports commands lazily by name)."""
    local = []
    for path in SRC.glob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for target, node in _package_imports(fn):
                    if target != "__init__":  # the version string from the package root
                        local.append(f"{path.stem}.{fn.name} imports {target} (line {node.lineno})")
    assert local == []


def test_no_module_imports_matplotlib_but_plots():
    users = [p.stem for p in SRC.glob("*.py") if p.stem != "plots" and any(
        isinstance(n, (ast.Import, ast.ImportFrom)) and "matplotlib" in ast.dump(n) for n in ast.walk(ast.parse(p.read_text())))]
    assert users == []
