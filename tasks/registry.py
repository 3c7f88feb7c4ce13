"""Log a model directory as an MLflow model and register a new version with the alias ``challenger``."""
from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient

POLICY_NAME = "rlhf-policy"
REWARD_NAME = "rlhf-reward-model"
_MODELS = Path(__file__).parent / "mlflow_models"
_CORE = Path(__file__).resolve().parent.parent / "rlhf"
# Explicit requirements: MLflow's inferred defaults pull torchvision (STACK-NOTES trap 2).
PIP_REQUIREMENTS = ["torch", "transformers", "safetensors", "tokenizers", "pandas"]


def log_and_register(model_dir: str, name: str, kind: str, tags: dict | None = None) -> str:
    """Log ``model_dir`` in the active run as an MLflow pyfunc ("models from code"; weights stay safetensors) and
    register it; returns the new version number."""
    import pandas as pd

    code = _MODELS / ("policy_model.py" if kind == "policy" else "reward_model.py")
    example = pd.DataFrame({"prompt": ["the acting in this film"]} if kind == "policy"
                           else {"prompt": ["the acting in this film"], "response": ["was superb."]})
    info = mlflow.pyfunc.log_model(name=kind, python_model=str(code), artifacts={"model": str(model_dir)},
                                   code_paths=[str(_CORE)], pip_requirements=PIP_REQUIREMENTS,
                                   input_example=example, registered_model_name=name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(name, "challenger", version)
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, version, k, str(v))
    return version
