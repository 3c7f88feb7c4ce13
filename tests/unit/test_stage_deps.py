"""dvc.yaml's deps cover every core module a stage runs (DESIGN invariant 1): the modules of rlhf/ that the stage's
module imports, directly or through others (every import statement counts, lazy ones inside functions too), must
each be listed as a dep or lie under a listed folder; otherwise an edit to, say, rlhf/losses.py would leave `ppo`
"up to date"."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def module_file(module: str, root: Path = ROOT) -> Path | None:
    p = root / Path(*module.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
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


def code_deps(stage: str, root: Path = ROOT) -> set[str]:
    """The source files (relative paths) of the stage's module and everything it imports from rlhf/, with the
    packages on the way; an ``__init__.py`` holding at most a docstring is left out (nothing in it can change a
    result)."""
    seen: set[Path] = set()
    todo = [f"rlhf.stages.{stage}"]
    while todo:
        module = todo.pop()
        f = module_file(module, root)
        if f is None or f in seen:
            continue
        seen.add(f)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imported_modules(f, root)
    return {p.relative_to(root).as_posix() for p in seen if p.name != "__init__.py" or not docstring_only(p)}


def docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def uncovered(stage: str, deps: list[str], root: Path = ROOT) -> list[str]:
    listed = [d.rstrip("/") for d in deps]
    return sorted(f for f in code_deps(stage, root)
                  if not any(f == d or f.startswith(d + "/") for d in listed))


PIPELINES = {"dvc.yaml": "", "examples/chat/dvc.yaml": "../../"}     # file -> prefix of its paths to the core
CASES = [(f, s) for f in PIPELINES for s in yaml.safe_load((ROOT / f).read_text())["stages"]]


@pytest.mark.parametrize("dvc_file,stage", CASES)
def test_every_module_a_stage_runs_is_a_dep(dvc_file, stage):
    prefix = PIPELINES[dvc_file]
    deps = [d[len(prefix):] for d in yaml.safe_load((ROOT / dvc_file).read_text())["stages"][stage]["deps"]
            if d.startswith(prefix)]
    missing = uncovered(stage, deps)
    assert missing == [], f"{dvc_file}: stage {stage} runs {missing} but does not depend on it"


def test_the_check_finds_a_missing_module(tmp_path):
    (tmp_path / "rlhf" / "stages").mkdir(parents=True)
    (tmp_path / "rlhf" / "__init__.py").write_text("")
    (tmp_path / "rlhf" / "stages" / "__init__.py").write_text("")
    (tmp_path / "rlhf" / "stages" / "s.py").write_text("from rlhf.losses import x\n\ndef f():\n    import rlhf.kl\n")
    (tmp_path / "rlhf" / "losses.py").write_text("from .masking import m\n")
    (tmp_path / "rlhf" / "masking.py").write_text("")
    (tmp_path / "rlhf" / "kl.py").write_text("")
    assert code_deps("s", tmp_path) == {"rlhf/stages/s.py", "rlhf/losses.py", "rlhf/masking.py", "rlhf/kl.py"}
    assert uncovered("s", ["rlhf/stages/s.py", "rlhf/losses.py"], tmp_path) == ["rlhf/kl.py", "rlhf/masking.py"]
    assert uncovered("s", ["rlhf/stages/s.py", "rlhf"], tmp_path) == []
