"""The package as a whole: what ``import mlds_jax`` loads, and how its modules import each other.

* ``import mlds_jax`` loads only the required dependencies (jax, jaxlib, optax, numpy) and
  what they need themselves: scikit-learn, matplotlib, tqdm and chex are extras.
* Imports flow one way: no module imports an underscored name of another module, and the
  package's import graph has no cycle.
* The top level holds the verbs (``mj.__all__``); a name that moved to a namespace still
  resolves with a warning naming its home, and none of our own code or pages uses one.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest

import mlds_jax as mj

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlds_jax"

_LOADED = """
import sys
before = set(sys.modules)
import mlds_jax
print(__import__("json").dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""


REQUIRED = {"jax", "jaxlib", "optax", "numpy"}
EXTRAS = ("sklearn", "matplotlib", "tqdm", "chex", "pandas", "torch", "hypothesis", "IPython")


def test_import_loads_none_of_the_extras():
    out = subprocess.run([sys.executable, "-c", _LOADED], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout))
    assert REQUIRED - {"jaxlib"} <= loaded
    assert not loaded & set(EXTRAS), f"import mlds_jax loaded {sorted(loaded & set(EXTRAS))}"


def test_module_level_imports_are_the_standard_library_and_the_required_dependencies():
    """Optional dependencies are imported inside the functions that use them, so a missing
    extra costs only that function (with an error naming the extra)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in REQUIRED | {"mlds_jax"}:
                    found.setdefault(top, []).append(path.name)
    assert not found, f"module-level imports outside the required dependencies: {found}"


#: Every Python file of the repository that may use the package.
SOURCES = [
    *sorted(PACKAGE.rglob("*.py")),
    *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
    *sorted((ROOT / "examples").glob("*.py")),
    *sorted((ROOT / "notebooks").glob("*.py")),
    *sorted((ROOT / "docs").glob("*.py")),
]


def _module_name(path: pathlib.Path) -> str:
    if path.is_relative_to(PACKAGE):
        return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    return str(path.relative_to(ROOT))


def _is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").is_file()


class _Imports(ast.NodeVisitor):
    """A file's uses of the package: the modules it imports (every form: ``import mlds_jax as
    mj``, ``import mlds_jax.core``, ``from mlds_jax import core``, ``from mlds_jax.core import
    x``, relative imports inside the package) and every underscored name it reaches in them,
    imported or by attribute: a module alias, then a dot, then a leading-underscore name, at
    any depth of the package."""

    def __init__(self, module: str):
        self.module = module
        self.aliases: dict[str, str] = {}  # local name -> mlds_jax module it stands for
        self.edges: set[str] = set()
        self.private: list[str] = []
        self.top_level: set[str] = set()  # names reached as mj.<name>

    def _absolute(self, node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module
        base = self.module.split(".")
        if not _is_package(self.module):
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name == "mlds_jax" or a.name.startswith("mlds_jax."):
                self.edges.add(a.name)
                self.aliases[a.asname or a.name.split(".")[0]] = a.asname and a.name or "mlds_jax"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = self._absolute(node)
        if not target or not (target == "mlds_jax" or target.startswith("mlds_jax.")):
            return
        for a in node.names:
            sub = f"{target}.{a.name}"
            if _is_package(sub) or (ROOT / (sub.replace(".", "/") + ".py")).is_file():
                self.edges.add(sub)  # from mlds_jax import core: the module core
                self.aliases[a.asname or a.name] = sub
            else:
                self.edges.add(target)
            if a.name.startswith("_") and not a.name.endswith("__"):
                self.private.append(f"from {target} import {a.name}")

    def _resolve(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            if base is not None:
                return f"{base}.{node.attr}"
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        base = self._resolve(node.value)
        if base is not None and node.attr.startswith("_") and not node.attr.endswith("__"):
            self.private.append(f"{base}.{node.attr}")
        if base == "mlds_jax" and not node.attr.startswith("__"):
            self.top_level.add(node.attr)
        self.generic_visit(node)


def _scan(path: pathlib.Path) -> _Imports:
    visitor = _Imports(_module_name(path))
    visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
    return visitor


def test_nothing_reaches_another_modules_private_names():
    """Not the package, not the tests, benchmarks, examples or notebooks: a name another
    module needs is public in its module.  (A module's own underscored names are its own.)"""
    found = {}
    for path in SOURCES:
        scan = _scan(path)
        own = scan.module
        bad = [p for p in scan.private if not p.startswith(own + ".") and own != "mlds_jax"]
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    assert not found, f"underscored names of other modules: {found}"


def test_the_import_graph_has_no_cycle():
    """The package's modules, the package roots included as nodes (``mlds_jax`` and every
    subpackage's ``__init__``): a module that imports its own package, or the top-level
    ``mlds_jax`` from inside what that imports, is a cycle."""
    graph = {_scan(p).module: _scan(p).edges - {_scan(p).module} for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            assert state.get(t) != 1, f"import cycle: {' -> '.join([*stack, t])}"
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def _reaches(graph: dict[str, set[str]], start: str, prefix: str) -> list[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for t in graph.get(m, ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return sorted(t for t in seen if t == prefix or t.startswith(prefix + "."))


def test_imports_flow_one_way():
    """activations/losses/layers import nothing from the package; extensions never import
    training; training imports no extension; io imports no training (directly or through
    another module)."""
    graph = {_scan(p).module: _scan(p).edges for p in PACKAGE.rglob("*.py")}
    for leaf in ("mlds_jax.activations", "mlds_jax.losses", "mlds_jax.layers"):
        assert not graph[leaf], f"{leaf} imports {graph[leaf]}"
    rules = [("mlds_jax.extensions", "mlds_jax.training"),
             ("mlds_jax.training", "mlds_jax.extensions"),
             ("mlds_jax.io", "mlds_jax.training")]  # fmt: skip
    for source, forbidden in rules:
        for module in graph:
            if module == source or module.startswith(source + "."):
                reached = _reaches(graph, module, forbidden)
                assert not reached, f"{module} reaches {reached}"


#: a sample of the names the top level held before the split into namespaces, with their homes
MOVED_SAMPLE = {
    "relu": "activations",
    "HIDDEN_ACTIVATIONS": "activations",
    "dense_forward": "core",
    "one_hot": "datasets",
    "quadratic_example": "descent",
    "dp_epsilon": "extensions",
    "output_jacobian": "extensions",
    "LOSSES": "losses",
    "prepare_targets": "network",
    "pad_rows": "parallel",
    "default_cache_dir": "compilation",
    "default_loss": "training",
    "GradCheckReport": "autodiff",
}


def test_the_top_level_is_the_verbs_and_a_moved_name_warns_with_its_home():
    for name in mj.__all__:
        assert getattr(mj, name) is not None  # resolves (a moved name's warning is an error)
    for name, home in MOVED_SAMPLE.items():
        assert name not in mj.__all__
        with pytest.warns(DeprecationWarning, match=rf"mlds_jax\.{name} moved to mlds_jax\.{home}"):
            value = getattr(mj, name)
        assert value is getattr(getattr(mj, home), name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        getattr(mj, "no_such_name")  # noqa: B009


def test_tests_examples_notebooks_and_docs_use_only_the_public_top_level():
    """``mj.<name>`` anywhere in our own code and pages is a name in ``mj.__all__``: nothing of
    ours leans on a moved (deprecated) name."""
    public = set(mj.__all__)
    found = {}
    for path in SOURCES:
        bad = _scan(path).top_level - public
        if bad:
            found[str(path.relative_to(ROOT))] = sorted(bad)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        bad = set(re.findall(r"\bmj\.([A-Za-z]\w*)", path.read_text(encoding="utf-8"))) - public
        if bad:
            found[str(path.relative_to(ROOT))] = sorted(bad)
    assert not found, f"names not in mlds_jax.__all__: {found}"
