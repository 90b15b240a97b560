"""Which part of peftlab may import which, read from the source with ``ast`` (nothing is imported).

* ``core/`` is the library's contract: it imports nothing from the methods or from what is built on the library.
* ``methods/`` with ``core/`` is the library: it never imports training, benchmarks, tasks, interop or the CLI.
* Method families import as the survey draws them: a base family (baseline, additive, partial,
  reparameterized) imports only ``methods/shared/`` and itself; ``shared/`` imports no family; the composite
  families (hybrid, unified) build on the base families' methods, never on each other.
* No peftlab module imports itself back through others: the import graph has no cycle.

Every import counts: at module level, inside a function, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peftlab"

ABOVE_THE_LIBRARY = {"train", "bench", "cli", "tasks", "interop", "search"}
BASE_FAMILIES = {"baseline", "additive", "partial", "reparameterized"}
MAY_IMPORT = {  # methods/<folder> -> the methods/ folders it may import from
    **{family: {family, "shared"} for family in BASE_FAMILIES},
    "shared": {"shared"},
    "hybrid": BASE_FAMILIES | {"hybrid", "shared"},
    "unified": BASE_FAMILIES | {"unified", "shared"},
}


def module_files() -> dict[str, Path]:
    """Every peftlab module's dotted name and its file (a package by its ``__init__.py``)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("peftlab", *path.relative_to(PACKAGE).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


MODULES = module_files()


def imported_modules(name: str) -> Iterator[tuple[str, int]]:
    """The peftlab modules ``name`` imports, anywhere in its file, with the line of each import."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name`, the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            while target and target not in MODULES:  # `import peftlab.core.x.attr` -> peftlab.core.x
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, node.lineno


IMPORTS = {name: list(imported_modules(name)) for name in MODULES}


def part(name: str) -> str | None:
    """``peftlab.<part>.…``: core, methods, train, ...; None for the package itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def family(name: str) -> str | None:
    """``peftlab.methods.<family>.…``: the folder under methods/; None outside one."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "methods" else None


def imports_of(prefix: str) -> Iterator[tuple[str, str, int]]:
    for name in sorted(MODULES):
        if name.startswith(prefix):
            for target, line in IMPORTS[name]:
                yield name, target, line


def test_core_imports_nothing_built_on_it():
    wrong = [f"{name}:{line} imports {target}" for name, target, line in imports_of("peftlab.core.")
             if part(target) in ABOVE_THE_LIBRARY | {"methods"}]
    assert not wrong, "\n".join(wrong)


def test_methods_import_nothing_built_on_the_library():
    wrong = [f"{name}:{line} imports {target}" for name, target, line in imports_of("peftlab.methods.")
             if part(target) in ABOVE_THE_LIBRARY]
    assert not wrong, "\n".join(wrong)


def test_every_folder_under_methods_has_a_rule():
    folders = {path.parent.name for path in (PACKAGE / "methods").glob("*/__init__.py")}
    assert folders == set(MAY_IMPORT), "give a new folder under methods/ its place in MAY_IMPORT"


def test_method_families_import_as_the_survey_draws_them():
    wrong = [f"{name}:{line} imports {target} ({family(name)} may import {sorted(MAY_IMPORT[family(name)])})"
             for name, target, line in imports_of("peftlab.methods.")
             if family(name) and family(target) and family(target) not in MAY_IMPORT[family(name)]]
    assert not wrong, "\n".join(wrong)


def import_cycles() -> list[list[str]]:
    """The strongly connected groups of two or more modules in the import graph (Tarjan's algorithm)."""
    graph = {name: sorted({target for target, _ in imports}) for name, imports in IMPORTS.items()}
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(name: str) -> None:
        index[name] = lowest[name] = len(index)
        stack.append(name)
        for target in graph[name]:
            if target not in index:
                visit(target)
                lowest[name] = min(lowest[name], lowest[target])
            elif target in stack:
                lowest[name] = min(lowest[name], index[target])
        if lowest[name] == index[name]:
            group = stack[stack.index(name):]
            del stack[stack.index(name):]
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycle():
    cycles = import_cycles()
    assert not cycles, "modules that import each other, directly or through others:\n" + "\n".join(
        " <-> ".join(group) for group in cycles)
