"""DESIGN.md: the algorithm core never imports prefect, mlflow or dvc."""
import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "rlhf"
FORBIDDEN = {"prefect", "mlflow", "dvc"}


def test_core_source_has_no_orchestration_imports():
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_core_loads_no_orchestration_module():
    code = ("import sys, importlib, pkgutil, rlhf\n"
            "for m in pkgutil.walk_packages(rlhf.__path__, 'rlhf.'): importlib.import_module(m.name)\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'prefect', 'mlflow', 'dvc'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
