"""The package's layout: wings whose imports run one way, and no import circles.

cli -> tuning / report / export -> training -> features -> data -> models (CONTRIBUTING.md).
Function-level imports count too: a circle closed inside a function is still a circle.
"""

import ast
import pathlib

import keras_transfer

PACKAGE = pathlib.Path(keras_transfer.__file__).parent
# A wing may import from the wings of lower rank and from itself, not from one of its rank.
RANKS = {
    "models": 0,
    "data": 1,
    "features": 2,
    "training": 3,
    "tuning": 4,
    "report": 4,
    "export": 4,
    "cli": 5,
}


def _modules():
    """{"wing.module": path} for every module of the package but its `__init__`s."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }


def _imports(path, known):
    """The package modules `path` imports, wherever in the file the import is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("keras_transfer.") and name[len("keras_transfer.") :] in known:
                found.add(name[len("keras_transfer.") :])
    return found


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_module_sits_in_a_wing():
    stray = [name for name in _modules() if name.split(".")[0] not in RANKS or "." not in name]
    assert not stray, f"modules outside the wings {sorted(RANKS)}: {stray}"


def test_imports_run_down_the_wings():
    wrong = []
    for name, imported in _graph().items():
        wing = name.split(".")[0]
        for other in imported:
            other_wing = other.split(".")[0]
            if other_wing != wing and RANKS[other_wing] >= RANKS[wing]:
                wrong.append(f"{name} imports {other}")
    assert not wrong, "imports against the wings' order:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    circles, done = [], set()

    def visit(name, path):
        if name in path:
            circles.append(" -> ".join(path[path.index(name) :] + [name]))
            return
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not circles, "import circles:\n" + "\n".join(circles)
