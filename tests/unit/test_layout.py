"""The shape DESIGN.md agrees on, checked on the source: one stage list (dvc.yaml's, read by tasks/graph.py), one
source of defaults (the dataclasses equal params.yaml), public APIs of prefect, dvc, mlflow and threading only, and
flows/ that only compose (no torch, no HTML, no HTTP client, small files)."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from rlhf.config import PipelineConfig, flatten, load_params, to_dict
from tasks.graph import declared_stages

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("rlhf", "tasks", "flows", "report", "benchmarks")
STAGE_LIST_HOME = ROOT / "tasks" / "graph.py"


def sources(*dirs: str) -> list[Path]:
    """The project's own .py files under ``dirs`` (not those of a virtualenv: .venv, benchmarks/.venv-trl*)."""
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py")
                  if not any(part.startswith(".venv") for part in p.relative_to(ROOT).parts))


def stage_list_literals(tree: ast.AST, stages: set[str]) -> list[int]:
    """Line numbers of list/tuple/set literals and dict displays naming more than half of the stages."""
    hits = []
    for node in ast.walk(tree):
        items = (node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set))
                 else [k for k in node.keys if k is not None] if isinstance(node, ast.Dict) else [])
        named = {x.value for x in items if isinstance(x, ast.Constant) and isinstance(x.value, str)} & stages
        if len(named) > len(stages) // 2:
            hits.append(node.lineno)
    return hits


def test_only_the_graph_module_knows_the_stages():
    stages = set(declared_stages(ROOT))
    assert len(stages) >= 5
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in sources(*CODE_DIRS) if p != STAGE_LIST_HOME
                 for line in stage_list_literals(ast.parse(p.read_text()), stages)]
    assert offenders == [], "the stage list is written out here; import tasks.graph.declared_stages instead"


def test_the_stage_list_check_catches_a_list():
    stages = {"prepare", "pretrain", "sft", "collect", "reward", "ppo", "evaluate"}
    tree = ast.parse('S = ("prepare", "pretrain", "sft", "collect", "reward")\nT = {"ppo": 1, "sft": 2}\n')
    assert stage_list_literals(tree, stages) == [1]


def test_dataclass_defaults_are_params_yaml():
    """One source of every default: a key missing from a params file means exactly what params.yaml says."""
    ours, file = flatten(to_dict(PipelineConfig())), flatten(to_dict(load_params(ROOT / "params.yaml")))
    differ = {k: (ours.get(k), v) for k, v in file.items() if ours.get(k) != v}
    assert differ == {}, "dataclass default != params.yaml value: " + ", ".join(
        f"{k}: {a!r} != {b!r}" for k, (a, b) in differ.items())


def test_the_defaults_check_sees_a_difference(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  cliprange: 0.2\n", "  cliprange: 0.3\n")
    assert "cliprange: 0.3" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").ppo.cliprange != PipelineConfig().ppo.cliprange


def test_a_partial_section_keeps_its_own_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("sft: {train: {epochs: 1}}\n")
    cfg = load_params(tmp_path / "params.yaml")
    assert cfg.sft.train.epochs == 1.0 and cfg.sft.train.lr == PipelineConfig().sft.train.lr != \
        PipelineConfig().pretrain.train.lr


PRIVATE_LIBS = ("prefect", "dvc", "mlflow", "threading")
# Private members used on objects of these libraries (not visible as module attributes).
PRIVATE_TEXT = [re.compile(p) for p in (r"\brepo\._\w", r"\bthreading\._\w", r"\batexit\._\w", r"\bos\._exit\b",
                                        r"PREFECT__\w")]


def private_uses(tree: ast.AST, text: str) -> list[str]:
    """Private names of prefect, dvc, mlflow or threading: imported, or read as a module attribute."""
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PRIVATE_LIBS:
                    aliases.add((a.asname or a.name).split(".")[0])
                    found += [a.name for part in a.name.split(".") if part.startswith("_")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PRIVATE_LIBS:
            private = [p for p in node.module.split(".") if p.startswith("_") and not p.startswith("__")]
            found += [f"from {node.module}" for _ in private[:1]]
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.append(f"{root.id}...{node.attr}")
    found += [m.group(0) for rx in PRIVATE_TEXT for m in rx.finditer(text)]
    return found


def test_no_private_api_of_prefect_dvc_mlflow_or_threading():
    me = Path(__file__).resolve()
    offenders = {}
    for p in sources(*CODE_DIRS, "tests"):
        if p.resolve() == me:
            continue
        text = p.read_text()
        uses = private_uses(ast.parse(text), text)
        if uses:
            offenders[str(p.relative_to(ROOT))] = uses
    assert offenders == {}


@pytest.mark.parametrize("code", ["import threading\nthreading._shutdown()\n",
                                  "from mlflow.utils.validation import _validate_metric_name\n",
                                  "from prefect._internal import x\n", "import dvc.repo\ndvc.repo._x\n",
                                  "env = {'PREFECT__SERVER_FINAL': '1'}\n", "with Repo() as repo:\n    repo._reset()\n"])
def test_the_private_api_check_catches(code):
    assert private_uses(ast.parse(code), code)


def test_flows_only_compose():
    heavy = {"torch", "requests", "httpx", "urllib", "jinja2", "html"}
    problems = []
    for p in sources("flows"):
        text = p.read_text()
        lines = len(text.splitlines())
        if lines > 200:
            problems.append(f"{p.name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            problems += [f"{p.name}: imports {n}" for n in names if n.split(".")[0] in heavy]
        if re.search(r"<(html|div|table|svg)\b", text):
            problems.append(f"{p.name}: HTML")
    assert problems == []
