"""The code a stage runs, as files and as one hash: the stage module and every rlhf/ module it imports, directly or
through others (every import statement counts, lazy ones inside functions too).

The same set is what dvc.yaml lists as the stage's code deps (tests/unit/test_stage_deps.py checks it), and its hash
is part of a checkpoint's fingerprint (rlhf/checkpoint.py): a checkpoint written by other code is not resumed.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]          # the folder holding the rlhf package


def module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    p = root / Path(*module.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def imported_modules(path: Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Every rlhf.* module an ``import`` or ``from ... import`` in ``path`` names (relative imports resolved)."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "rlhf"}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.split(".")[0] == "rlhf":
                out.add(module)
                out |= {f"{module}.{a.name}" for a in node.names}      # `from rlhf import chat` names a module
    return out


def docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def code_files(module: str, root: Path = PACKAGE_ROOT) -> set[str]:
    """The source files (paths relative to ``root``) of ``module`` and everything it imports from rlhf/, with the
    packages on the way; an ``__init__.py`` holding at most a docstring is left out (nothing in it can change a
    result)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        f = module_file(name, root)
        if f is None or f in seen:
            continue
        seen.add(f)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imported_modules(f, root)
    return {p.relative_to(root).as_posix() for p in seen if p.name != "__init__.py" or not docstring_only(p)}


@functools.lru_cache(maxsize=None)
def code_version(module: str, root: Path = PACKAGE_ROOT) -> str:
    """sha256 over the paths and bytes of ``code_files(module)``: changes with any edit to the code the module runs.
    Computed once per process and module (a stage reads its own source once, when it starts)."""
    if module_file(module, root) is None:
        raise ValueError(f"no module {module!r} under {root}: cannot tell which code a checkpoint was written by")
    h = hashlib.sha256()
    for rel in sorted(code_files(module, root)):
        h.update(rel.encode("utf-8") + b"\0")
        h.update((root / rel).read_bytes() + b"\0")
    return h.hexdigest()
