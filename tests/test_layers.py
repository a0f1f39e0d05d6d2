"""The house's layer table, read from the imports of every module under segkit/ (ast).

An import may only point down the table; a new upward (or sideways) import fails here with the
offending file, line and statement. DESIGN.md explains the layers.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "segkit"

# bottom to top; packages on one line are siblings and may not import each other
LAYERS = [
    ("segkit.ground",),
    ("segkit.io",),
    ("segkit.data",),
    ("segkit.models", "segkit.post", "segkit.metrics"),
    ("segkit.runs",),
    ("segkit.train", "segkit.infer"),
    ("segkit.report",),
    ("segkit.search",),
    ("segkit.cli",),
    ("segkit.__main__", "segkit"),  # `python -m segkit` and the public API (segkit/__init__.py)
]
# the one sideways arrow: validation during training calls the inference predictor
SIDEWAYS = {("segkit.train.validate", "segkit.infer")}
MAX_LINES = 420  # "no file over about 400 lines"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> tuple[int, str]:
    """(level, package) of a segkit module: the longest package prefix in LAYERS."""
    best = None
    for level, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                if best is None or len(package) > len(best[1]):
                    best = (level, package)
    assert best is not None, f"{module}: not in the layer table of tests/test_layers.py"
    return best


def _imports(path: Path):
    """(line, imported segkit module, statement text) for every import in the file, nested ones too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "segkit" or name.startswith("segkit."):
                yield node.lineno, name, ast.get_source_segment(path.read_text(), node).splitlines()[0]


def _allowed(importer: str, imported: str) -> bool:
    level_from, package_from = _layer(importer)
    level_to, package_to = _layer(imported)
    if package_from == package_to or level_to < level_from:
        return True
    return any(importer.startswith(src) and imported.startswith(dst) for src, dst in SIDEWAYS)


def _existing(name: str) -> bool:
    """True for a segkit module or package (``from x import y`` also names symbols y)."""
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative / "__init__.py").is_file()


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in FILES:
        _layer(_module_name(path))


def test_imports_point_down():
    offending = []
    for path in FILES:
        importer = _module_name(path)
        for line, name, text in _imports(path):
            if _existing(name) and not _allowed(importer, name):
                offending.append(f"{path.relative_to(ROOT.parent)}:{line}: {text}  "
                                 f"({_layer(importer)[1]} may not import {_layer(name)[1]})")
    assert not offending, "imports that point up or sideways:\n" + "\n".join(offending)


def test_no_import_cycles_between_modules():
    """Module-level imports form no cycle (a cycle means two modules are really one)."""
    graph = {}
    for path in FILES:
        tree = ast.parse(path.read_text())
        targets = set()
        for node in tree.body:  # module level only: a function-local import is resolved at call time
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segkit"):
                targets |= {n for n in [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                            if _existing(n)}
        graph[_module_name(path)] = targets - {_module_name(path)}

    def visit(node, stack, done):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        done.add(node)
        for nxt in graph.get(node, ()):
            cycle = visit(nxt, stack + [node], done)
            if cycle:
                return cycle
        return None

    done: set = set()
    for module in graph:
        cycle = visit(module, [], done)
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_files_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)}: {lines} lines; split it (house rule: ~400)"


def test_a_planted_upward_import_is_caught(tmp_path):
    """The checker itself: io importing data is refused, train.validate importing infer is allowed."""
    assert not _allowed("segkit.io.raster", "segkit.data.windows")
    assert not _allowed("segkit.infer.run", "segkit.train.fit")
    assert not _allowed("segkit.post.crf", "segkit.models.factory")
    assert _allowed("segkit.train.validate", "segkit.infer.predict")
    assert _allowed("segkit.cli.infer", "segkit.infer.run")


MAX_FUNCTION_LINES = 60  # "no function over about 60 lines or 8 parameters without a comment saying why"
MAX_PARAMETERS = 8
WHY = "# why:"  # a comment in the function's first lines that says why it is long or takes many parameters


def _oversized(path: Path):
    """(line, name, lines, parameters) of the functions over either limit without a `# why:` comment."""
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = node.args
        names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
        count = len(names) + bool(args.vararg) + bool(args.kwarg)
        length = node.end_lineno - node.lineno + 1
        if length <= MAX_FUNCTION_LINES and count <= MAX_PARAMETERS:
            continue
        head = "\n".join(lines[node.lineno - 1: node.body[0].end_lineno + 3])
        if WHY not in head:
            yield node.lineno, node.name, length, count


def test_functions_stay_short_or_say_why():
    found = [f"{path.relative_to(ROOT.parent)}:{line}: {name} ({length} lines, {count} parameters)"
             for path in FILES for line, name, length, count in _oversized(path)]
    assert not found, (f"functions over {MAX_FUNCTION_LINES} lines or {MAX_PARAMETERS} parameters without a "
                       f"'{WHY}' comment at their top:\n" + "\n".join(found))


def test_the_function_size_check_catches_a_long_function(tmp_path):
    body = "\n".join(f"    x{k} = {k}" for k in range(70))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n\n\ndef wide(a, b, c, d, e, f, g, h, i):\n    pass\n"
                                      f"\n\ndef told(a, b, c, d, e, f, g, h, i):\n    # why: a test\n    pass\n")
    assert [name for _, name, _, _ in _oversized(tmp_path / "long.py")] == ["long", "wide"]
