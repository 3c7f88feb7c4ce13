"""dvc.yaml's deps cover every core module a stage runs (DESIGN invariant 1): the modules of rlhf/ that the stage's
module imports, directly or through others (every import statement counts, lazy ones inside functions too), must
each be listed as a dep or lie under a listed folder; otherwise an edit to, say, rlhf/losses.py would leave `ppo`
"up to date"."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlhf.codeversion import code_files

ROOT = Path(__file__).resolve().parents[2]


def code_deps(stage: str, root: Path = ROOT) -> set[str]:
    """The source files (relative paths) of the stage's module and everything it imports from rlhf/ (the same walk
    whose hash is a checkpoint's code version)."""
    return code_files(f"rlhf.stages.{stage}", root)


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
