"""The house rules of the package's modules, read from their source with ast (nothing is imported).

- imports among the modules run one way: no cycle, counting the imports made
  inside functions (and under ``if TYPE_CHECKING:``) too;
- no module is over MAX_LINES lines;
- no module imports another's private name (``_name``, not ``__dunder__``):
  what a module shares, it names without an underscore.
"""

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = Path(__file__).parent.parent / "hydra_plugins" / "hydra_joblib_launcher"
PACKAGE_NAME = "hydra_plugins.hydra_joblib_launcher"
MAX_LINES = 350


@dataclass(frozen=True)
class Import:
    """``importer`` imports ``names`` (empty: the module itself) from the package's ``module``."""

    importer: str
    module: str
    names: Tuple[str, ...]
    line: int


def modules(package: Path) -> Dict[str, Path]:
    """The package's modules by name (``__init__`` for the package itself)."""
    return {path.stem: path for path in sorted(package.glob("*.py"))}


def package_imports(package: Path) -> Iterator[Import]:
    """Every import of one of the package's modules by another, wherever it is in the source."""
    known = modules(package)
    for importer, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module = _in_package(alias.name, known)
                    if module is not None:
                        yield Import(importer, module, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                yield from _from_import(importer, node, known)


def _in_package(dotted: str, known: Dict[str, Path]) -> Optional[str]:
    """The package's module that an absolute ``dotted`` name is, or is in; None if outside."""
    if dotted == PACKAGE_NAME:
        return "__init__"
    prefix = PACKAGE_NAME + "."
    if not dotted.startswith(prefix):
        return None
    name = dotted[len(prefix) :].split(".")[0]
    return name if name in known else None


def _from_import(importer: str, node: ast.ImportFrom, known: Dict[str, Path]) -> Iterator[Import]:
    names = tuple(alias.name for alias in node.names)
    if node.level == 1:
        target: Optional[str] = (node.module or "__init__").split(".")[0]
    elif node.level == 0 and node.module is not None:
        target = _in_package(node.module, known)
    else:
        target = None  # above the package
    if target is None:
        return
    if target != "__init__":
        yield Import(importer, target, names, node.lineno)
        return
    # ``from . import x``: each x is a module of the package, or a name of its __init__
    for name in names:
        if name in known:
            yield Import(importer, name, (), node.lineno)
        else:
            yield Import(importer, "__init__", (name,), node.lineno)


def import_graph(package: Path) -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {name: set() for name in modules(package)}
    for each in package_imports(package):
        graph[each.importer].add(each.module)
    return graph


@dataclass(frozen=True)
class Cycle:
    path: List[str]  # a -> b -> a
    group: List[str]  # every module in a cycle with these (sorted)

    def __str__(self) -> str:
        text = " -> ".join(self.path)
        if len(self.group) > len(self.path) - 1:
            text += f" (one of the cycles among {', '.join(self.group)})"
        return text


def cycles(graph: Dict[str, Set[str]]) -> List[Cycle]:
    """One cycle (the shortest from its first module) through each group that import each other."""
    found: List[Cycle] = []
    for group in strongly_connected(graph):
        start = min(group)
        if len(group) == 1 and start not in graph[start]:
            continue
        found.append(Cycle(_path_back(graph, start, group), sorted(group)))
    return found


def strongly_connected(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """Tarjan's algorithm: the groups of modules each reachable from every other."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[Set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group: Set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _path_back(graph: Dict[str, Set[str]], start: str, group: Set[str]) -> List[str]:
    """The shortest path from ``start`` back to itself within ``group``."""
    paths = [[start]]
    seen: Set[str] = set()
    while paths:
        path = paths.pop(0)
        for succ in sorted(graph[path[-1]] & group):
            if succ == start:
                return path + [start]
            if succ not in seen:
                seen.add(succ)
                paths.append(path + [succ])
    raise AssertionError(f"{start} is in a cycle with no path back")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(package: Path) -> List[str]:
    """Each private name a module imports from another, where."""
    return [
        f"{each.importer}.py:{each.line} imports {name} from {each.module}"
        for each in package_imports(package)
        for name in each.names
        if is_private(name) and each.module != each.importer
    ]


def long_modules(package: Path) -> Dict[str, int]:
    """The modules over MAX_LINES lines, and their lengths."""
    lengths = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in modules(package).items()
    }
    return {name: n for name, n in lengths.items() if n > MAX_LINES}


# -- the rules -------------------------------------------------------------------------


def test_the_package_is_found() -> None:
    assert {"_supervisor", "_outcome", "joblib_launcher"} <= set(modules(PACKAGE)), PACKAGE


def test_no_import_cycle() -> None:
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles among the package's modules:\n" + "\n".join(map(str, found))


def test_no_module_is_too_long() -> None:
    long = long_modules(PACKAGE)
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{name}.py ({n} lines)" for name, n in sorted(long.items())
    )


def test_no_private_name_is_imported_from_another_module() -> None:
    offending = private_imports(PACKAGE)
    assert not offending, "private names imported from another module:\n" + "\n".join(offending)


# -- the checks check: a cycle, a private name, a long module are found ----------------


def write_package(root: Path, sources: Dict[str, str]) -> Path:
    package = root / "pkg"
    package.mkdir()
    for name, source in sources.items():
        (package / f"{name}.py").write_text(source)
    return package


def test_a_cycle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__": "",
            "_a": "from ._b import run\n",
            "_b": "def run():\n    from . import _c\n",
            "_c": "import os\n\ndef f():\n    from ._a import g\n",
            "_d": "from ._a import run\n",  # imports the cycle, is not in it
        },
    )
    assert [cycle.path for cycle in cycles(import_graph(package))] == [["_a", "_b", "_c", "_a"]]


def test_a_private_name_import_is_found(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "_a": "def _helper(): ...\n",
            "_b": "from ._a import _helper, __doc__\nfrom . import _a\n",
        },
    )
    assert private_imports(package) == ["_b.py:1 imports _helper from _a"]


def test_a_long_module_is_found(tmp_path: Path) -> None:
    package = write_package(
        tmp_path, {"_short": "x = 1\n" * MAX_LINES, "_long": "x = 1\n" * (MAX_LINES + 1)}
    )
    assert long_modules(package) == {"_long": MAX_LINES + 1}
