"""Which part of edgeprune may import which, checked on the source with ``ast``.

* ``benchmarks`` imports nothing of ``edgeprune.devices`` (devices may import benchmarks):
  the measurement targets that need both live in ``devices/targets.py``.
* Library code (``pipeline``, ``exporters``, ``benchmarks``, ``devices`` and the shared
  ``edgeprune`` modules such as ``progress``) never imports the CLI (``edgeprune.cli``,
  ``edgeprune.cli_util``, ``edgeprune.commands``).
* Inside ``benchmarks`` and ``devices`` no function-local import of an edgeprune module is
  there to dodge an import cycle: counting every import that runs (module level and
  function-local, not ``if TYPE_CHECKING:``), no module of theirs is on a cycle. And a
  function-local edgeprune import must be lazy for a reason: the module it loads brings in
  a heavy third-party package (torch, matplotlib, ...) that the importer does not load.

``benchmarks/studies/`` (scripts, not installed) is outside these rules.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the installed packages and the folders they come from (pyproject.toml's package-dir)
FOLDERS = {"edgeprune.pipeline": "pipeline", "edgeprune.exporters": "exporters",
           "edgeprune.benchmarks": "benchmarks", "edgeprune.devices": "devices", "edgeprune": "edgeprune"}
LIBRARY = ("edgeprune.pipeline", "edgeprune.exporters", "edgeprune.benchmarks", "edgeprune.devices")
CLI = ("edgeprune.cli", "edgeprune.cli_util", "edgeprune.commands")
# edgeprune modules the library may use that are not in a library package
SHARED = ("edgeprune", "edgeprune.errors", "edgeprune.files", "edgeprune.progress", "edgeprune.console")
HEAVY = ("torch", "torchvision", "matplotlib", "onnxsim", "onnxscript", "scipy")
# function-local imports that are not cycle dodges nor heavy, in modules this test's authors
# do not own; each should move to module level (the cycle rule still covers them)
KNOWN_LAZY: set[tuple[str, str]] = set()     # (module, import) pairs allowed to stay function-local


@dataclass(frozen=True)
class Import:
    module: str          # the module imported (a top-level name for third-party ones)
    line: int
    local: bool          # inside a function
    type_checking: bool  # under ``if TYPE_CHECKING:``


def module_files() -> dict[str, Path]:
    """Every edgeprune module (dotted name) and its source file."""
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if package == "edgeprune.benchmarks" and rel.parts[0] == "studies":
                continue
            if package == "edgeprune" and rel.parts[0] not in ("commands", "build") and len(rel.parts) > 1:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts]) if parts else package] = path
    return out


MODULES = module_files()


def _resolve(name: str) -> str:
    """An imported dotted name as the edgeprune module that runs (``a.b.func`` -> ``a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    return parse_imports(MODULES[module].read_text(encoding="utf-8"), module)


def parse_imports(source: str, module: str = "<source>") -> tuple[Import, ...]:
    tree = ast.parse(source)
    found: list[Import] = []

    def visit(node: ast.AST, local: bool, tc: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, tc)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), local, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), local, tc)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(_one(alias.name, child.lineno, local, tc))
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{module}:{child.lineno}: relative import"
                base = child.module or ""
                names = [f"{base}.{a.name}" for a in child.names] if base.startswith("edgeprune") else [base]
                for name in names:
                    found.append(_one(name, child.lineno, local, tc))
            else:
                visit(child, local, tc)

    visit(tree, False, False)
    return tuple(found)


def _one(name: str, line: int, local: bool, tc: bool) -> Import:
    mod = _resolve(name) if name.startswith("edgeprune") else name.split(".")[0]
    return Import(mod, line, local, tc)


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _where(module: str, imp: Import) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{imp.line} imports {imp.module}"


def runtime_edges(module: str) -> set[str]:
    return {i.module for i in imports_of(module) if not i.type_checking and i.module in MODULES}


@cache
def closure(module: str, module_level_only: bool = False) -> frozenset[str]:
    """Everything importing ``module`` loads (edgeprune modules and third-party top names)."""
    seen: set[str] = set()
    stack = [module]
    while stack:
        m = stack.pop()
        for i in imports_of(m):
            if i.type_checking or (module_level_only and i.local) or i.module in seen:
                continue
            seen.add(i.module)
            if i.module in MODULES:
                stack.append(i.module)
    return frozenset(seen)


def test_modules_are_found():
    for name in ("edgeprune.benchmarks.bench", "edgeprune.benchmarks.targets", "edgeprune.devices.targets",
                 "edgeprune.devices.ssh", "edgeprune.progress", "edgeprune.cli_util", "edgeprune.commands.bench"):
        assert name in MODULES, name
    assert not any(m.startswith("edgeprune.benchmarks.studies") for m in MODULES)


def test_benchmarks_import_nothing_of_devices():
    bad = [_where(m, i) for m in MODULES if _in(m, ("edgeprune.benchmarks",))
           for i in imports_of(m) if _in(i.module, ("edgeprune.devices",))]
    assert not bad, "benchmarks must not import edgeprune.devices (devices may import benchmarks):\n" + "\n".join(bad)


def test_library_code_does_not_import_the_cli():
    library = [m for m in MODULES if _in(m, LIBRARY) or m in SHARED]
    assert "edgeprune.progress" in library
    bad = [_where(m, i) for m in library for i in imports_of(m) if _in(i.module, CLI)]
    assert not bad, "library code must not import the CLI:\n" + "\n".join(bad)
    # nor through another module: what a library module loads holds no CLI module
    for m in library:
        assert not [c for c in closure(m) if _in(c, CLI)], f"{m} loads the CLI indirectly"


def _cycles(nodes: list[str]) -> list[list[str]]:
    """Strongly connected components (Tarjan) with more than one module, or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(runtime_edges(v)):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in runtime_edges(v):
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle_through_benchmarks_or_devices():
    scope = ("edgeprune.benchmarks", "edgeprune.devices")
    cycles = [c for c in _cycles(sorted(MODULES)) if any(_in(m, scope) for m in c)]
    detail: list[str] = []
    for comp in cycles:
        for m in comp:
            detail += sorted({_where(m, i) + (" (function-local)" if i.local else "")
                              for i in imports_of(m) if not i.type_checking and i.module in comp})
    assert not cycles, "import cycles (a function-local import only hides them):\n" + "\n".join(detail)


def test_function_local_edgeprune_imports_are_lazy_for_a_reason():
    """In benchmarks/ and devices/: imports belong at module level, unless the module is heavy."""
    bad = []
    for m in MODULES:
        if not _in(m, ("edgeprune.benchmarks", "edgeprune.devices")):
            continue
        loaded = closure(m, module_level_only=True)
        for i in imports_of(m):
            if not i.local or i.type_checking or i.module not in MODULES or (m, i.module) in KNOWN_LAZY:
                continue
            heavy = {h for h in HEAVY if h in closure(i.module, module_level_only=True)} - set(loaded)
            if not heavy:
                bad.append(_where(m, i))
    assert not bad, ("function-local imports of light edgeprune modules (move them to module level):\n"
                     + "\n".join(bad))


def test_the_parser_sees_local_and_type_checking_imports():
    """Guards the guard: function-local and TYPE_CHECKING imports are told apart."""
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgeprune.devices.ssh import SshConfig\n"
           "def f():\n    from edgeprune.devices.profiles import load_profile\n"
           "    import matplotlib.pyplot as plt\nfrom edgeprune.devices import predictor\n")
    found = {(i.module, i.local, i.type_checking) for i in parse_imports(src)}
    assert found == {("typing", False, False), ("edgeprune.devices.ssh", False, True),
                     ("edgeprune.devices.profiles", True, False), ("matplotlib", True, False),
                     ("edgeprune.devices.predictor", False, False)}
