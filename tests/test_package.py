"""The package as a whole: what ``import mlds_jax`` loads, and how its modules import each other.

* ``import mlds_jax`` loads only the required dependencies (jax, jaxlib, optax, numpy) and
  what they need themselves: scikit-learn, matplotlib, tqdm and chex are extras.
* Imports flow one way: no module imports an underscored name of another module, and the
  package's import graph has no cycle.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

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


def _package_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported mlds_jax module, [names imported from it])]."""
    graph: dict[str, list[tuple[str, list[str]]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        edges = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "mlds_jax":  # from mlds_jax import core, validation
                    edges += [(f"mlds_jax.{a.name}", []) for a in node.names]
                elif node.module.startswith("mlds_jax."):
                    edges.append((node.module, [a.name for a in node.names]))
        graph[module] = edges
    return graph


def test_no_module_imports_another_modules_private_names():
    private = [(module, target, name) for module, edges in _package_imports().items()
               for target, names in edges for name in names
               if name.startswith("_") and not name.endswith("__")]
    private += [(module, target, "") for module, edges in _package_imports().items()
                for target, _ in edges
                if target.rsplit(".", 1)[-1].startswith("_")
                and not target.endswith("__")]
    assert not private, f"imports of private names: {private}"


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for t, _ in edges if t != m} for m, edges in _package_imports().items()}
    graph.pop("mlds_jax", None)  # the package's __init__ re-exports everything
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, ()):
            assert state.get(t) != 1, f"import cycle: {' -> '.join([*stack, t])}"
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for module in graph:
        if module not in state:
            visit(module)
    # the leaf modules really are leaves
    for leaf in ("mlds_jax.activations", "mlds_jax.losses", "mlds_jax.layers"):
        assert not graph[leaf], f"{leaf} imports {graph[leaf]}"
