"""The import graph of trainer/ and launch/: no circles among files or packages, no private names across modules.

Every import statement is read with `ast`, those inside functions included: a function-level import hides a circle
from Python but not from this test. Function-level imports of the project's own modules are allowed only where an
optional dependency or start-up time needs them, each listed in LAZY with its reason.
"""

from __future__ import annotations

import ast
import os
import pathlib
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOTS = ("trainer", "launch")
RUN_API = "owned by the run-API change"
LOOP = "owned by the loop change"

_AFTER_FLAGS = "JAX starts only after main set XLA_FLAGS (cpu_tuning) or JAX_PLATFORMS (--dry-run --target)"
_LAUNCHER = "start-up: the launcher loads JAX only for `up`'s checks (the fit check sets JAX_PLATFORMS first)"
_LM_EVAL = "optional dependency: harness imports lm-eval (the `eval` extra); a missing one is a one-line error"
_TASKS_ENV = "importing eval.tasks sets HF offline variables (the loop change removes that side effect)"

# (importing module, imported module) → why the import sits inside a function. The project's own modules only.
LAZY: dict[tuple[str, str], str] = {
    ("trainer.main", "trainer.sharding"): _AFTER_FLAGS,
    ("trainer.main", "trainer.target.padding"): _AFTER_FLAGS,
    ("trainer.main", "trainer.run.summary"): _AFTER_FLAGS,
    ("trainer.main", "trainer.step"): _AFTER_FLAGS,
    ("trainer.main", "trainer.model.attention"): _AFTER_FLAGS,
    ("trainer.main", "trainer.target.check"): _AFTER_FLAGS,
    ("trainer.main", "trainer.cpu_tuning"): _AFTER_FLAGS,
    ("trainer.main", "trainer.run.job"): _AFTER_FLAGS,
    ("launch.preflight", "trainer.run.job"): _LAUNCHER,
    ("launch.preflight", "trainer.target.check"): _LAUNCHER,
    ("trainer.eval.lm_eval_cli", "trainer.eval.harness"): _LM_EVAL,
    ("trainer.eval.__main__", "trainer.eval.harness"): _LM_EVAL,
    ("trainer.eval.__main__", "trainer.eval.report"): _LM_EVAL + " (imported in the same try)",
    ("trainer.eval.__main__", "trainer.eval.tasks"): _TASKS_ENV,
    ("trainer.eval.__main__", "trainer.storage"): "start-up: bad arguments fail before fsspec and Orbax load",
    ("trainer.eval.__main__", "trainer.checkpoint"): "start-up: bad arguments fail before fsspec and Orbax load",
    ("trainer.export.model_index", "trainer.eval.tasks"): _TASKS_ENV + "; only a card with lm-eval results needs it",
    ("trainer.run.budget", "trainer.storage"): "start-up: `python -m trainer.plan` reads a run only when asked",
    ("trainer.run.budget", "trainer.data.shards"): "start-up: `python -m trainer.plan` reads manifests only when asked",
    # Files the other changes of this round rewrite; their imports are theirs to settle.
    ("trainer.checkpoint", "trainer.data.pipeline"): RUN_API,
    ("trainer.run.metrics", "trainer.run.budget"): LOOP,
    ("trainer.eval.periodic", "trainer.eval.tasks"): LOOP,
    ("trainer.eval.periodic", "trainer.data.tokenizer"): LOOP,
    ("trainer.eval.periodic", "trainer.eval.harness"): LOOP,
    ("trainer.eval.periodic", "trainer.data.bos"): LOOP,
    ("trainer.eval.periodic", "trainer.eval.report"): LOOP,
}

# Circles (as sorted tuples of modules) and private names ("module: text") that run through files other changes own;
# they leave this list as those changes land.
KNOWN_CIRCLES: dict[tuple[str, ...], str] = {}
KNOWN_PRIVATE: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    """One import of a project module: who imports it, the module, the names taken from it, and where."""

    importer: str
    module: str
    names: tuple[str, ...]
    lazy: bool
    line: int


def module_files() -> dict[str, str]:
    """Every module of trainer/ and launch/ by dotted name (a package by its own name), to its path."""
    found = {}
    for root in ROOTS:
        for folder, _, files in os.walk(os.path.join(REPO, root)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), REPO)[: -len(".py")]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = os.path.join(folder, name)
    return found


MODULES = module_files()


def is_package(module: str) -> bool:
    return MODULES[module].endswith("__init__.py")


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project(name: str) -> str | None:
    """The longest project module that `name` names or lies in, or None for a third-party name."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


class _Reader(ast.NodeVisitor):
    """Collects the project imports of one module and the attribute chains read off module names."""

    def __init__(self, importer: str):
        self.importer = importer
        self.imports: list[Import] = []
        self.bound: dict[str, str] = {}  # local name → project module it is bound to
        self.attributes: list[tuple[str, str, int]] = []  # (module, attribute, line)
        self.depth = 0

    def _scoped(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scoped

    def _add(self, module: str, names: tuple[str, ...], line: int) -> None:
        self.imports.append(Import(self.importer, module, names, self.depth > 0, line))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = _project(alias.name)
            if module is None:
                continue
            self._add(module, (), node.lineno)
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:
                self.bound[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = _absolute(self.importer, node)
        if _project(source) is None:
            return
        plain = []
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in MODULES:
                self._add(submodule, (), node.lineno)
                self.bound[alias.asname or alias.name] = submodule
            else:
                plain.append(alias.name)
        if plain or not node.names:
            self._add(_project(source), tuple(plain), node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = []
        current: ast.AST = node
        while isinstance(current, ast.Attribute):
            chain.append(current.attr)
            current = current.value
        if isinstance(current, ast.Name) and current.id in self.bound:
            dotted = self.bound[current.id]
            for attr in reversed(chain):
                if f"{dotted}.{attr}" in MODULES:
                    dotted = f"{dotted}.{attr}"
                    continue
                self.attributes.append((dotted, attr, node.lineno))
                break
            return
        self.generic_visit(node)


def read(module: str) -> _Reader:
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read(), MODULES[module])
    reader = _Reader(module)
    reader.visit(tree)
    return reader


READERS = {module: read(module) for module in MODULES}


def package_of(module: str) -> str:
    """The unit a circle among packages is counted in: a subpackage, launch, or one module of the flat core."""
    parts = module.split(".")
    if (
        parts[0] == "trainer"
        and len(parts) >= 2
        and ("trainer." + parts[1]) in MODULES
        and is_package("trainer." + parts[1])
    ):
        return "trainer." + parts[1]
    if parts[0] == "launch":
        return "launch"
    return module


def circles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one node (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def file_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for reader in READERS.values():
        for imp in reader.imports:
            if imp.module != imp.importer:
                edges[imp.importer].add(imp.module)
    return edges


def package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for importer, targets in file_edges().items():
        for target in targets:
            a, b = package_of(importer), package_of(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return edges


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses() -> list[str]:
    found = []
    for module, reader in READERS.items():
        for imp in reader.imports:
            if imp.module != module:
                found += [f"{module}: from {imp.module} import {n}" for n in imp.names if _private(n)]
        found += [f"{module}: {m}.{a}" for m, a, _ in reader.attributes if _private(a) and m != module]
    return sorted(set(found))


def test_the_graph_sees_every_module():
    assert {"trainer.step", "trainer.data.prepare", "launch.local"} <= set(MODULES)
    assert "trainer.step" in file_edges()["trainer.main"] or any(
        i.module == "trainer.step" for i in READERS["trainer.main"].imports
    )


def test_the_reader_sees_hidden_imports_and_private_names():
    """What the checks below rely on: function-level imports, relative imports, aliases and attribute chains."""
    reader = _Reader("trainer.data.units")
    reader.visit(
        ast.parse(
            "import trainer.checkpoint\n"
            "from . import prepare as p\n"
            "def f():\n"
            "    from trainer.data.folder import _claim\n"
            "    return trainer.checkpoint._find_step, p._hidden, p.public\n"
        )
    )
    assert {(i.module, i.names, i.lazy) for i in reader.imports} == {
        ("trainer.checkpoint", (), False),
        ("trainer.data.prepare", (), False),
        ("trainer.data.folder", ("_claim",), True),
    }
    assert {(m, a) for m, a, _ in reader.attributes} == {
        ("trainer.checkpoint", "_find_step"),
        ("trainer.data.prepare", "_hidden"),
        ("trainer.data.prepare", "public"),
    }
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_circle_among_files():
    found = [c for c in circles(file_edges()) if c not in KNOWN_CIRCLES]
    assert not found, "import circles among files:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_no_circle_among_packages():
    found = [c for c in circles(package_edges()) if c not in KNOWN_CIRCLES]
    assert not found, "import circles among packages:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_trainer_never_imports_launch():
    found = [
        f"{imp.importer}:{imp.line} imports {imp.module}"
        for reader in READERS.values()
        for imp in reader.imports
        if imp.importer.startswith("trainer") and imp.module.startswith("launch")
    ]
    assert not found, "\n".join(found)


def test_no_private_name_across_modules():
    found = [use for use in private_uses() if use not in KNOWN_PRIVATE]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_function_level_imports_have_a_reason():
    found = sorted(
        {
            f"{imp.importer}:{imp.line} imports {imp.module}"
            for reader in READERS.values()
            for imp in reader.imports
            if imp.lazy and (imp.importer, imp.module) not in LAZY
        }
    )
    assert not found, "function-level imports of the project's own modules without a reason:\n" + "\n".join(found)


def test_the_lists_hold_nothing_stale():
    lazy_now = {(imp.importer, imp.module) for r in READERS.values() for imp in r.imports if imp.lazy}
    assert not set(LAZY) - lazy_now, "LAZY lists imports that are no longer function-level"
    all_circles = set(circles(file_edges())) | set(circles(package_edges()))
    assert not set(KNOWN_CIRCLES) - all_circles, "KNOWN_CIRCLES lists circles that are gone"
    assert not set(KNOWN_PRIVATE) - set(private_uses()), "KNOWN_PRIVATE lists private uses that are gone"


def test_package_docstrings_list_every_module():
    """Each package's docstring names every module it holds (as `name`), so a reader finds them all from there."""
    missing = []
    for package in (m for m in MODULES if is_package(m) and m not in ROOTS):
        doc = ast.get_docstring(ast.parse(pathlib.Path(MODULES[package]).read_text(encoding="utf-8"))) or ""
        members = [m.rsplit(".", 1)[1] for m in MODULES if m.rsplit(".", 1)[0] == package]
        missing += [f"{package}.{name}" for name in members if f"`{name}`" not in doc]
    launch_doc = ast.get_docstring(ast.parse(pathlib.Path(MODULES["launch"]).read_text(encoding="utf-8"))) or ""
    missing += [m for m in MODULES if m.startswith("launch.") and f"`{m.split('.', 1)[1]}`" not in launch_doc]
    assert not missing, "modules their package's docstring does not name: " + ", ".join(missing)
