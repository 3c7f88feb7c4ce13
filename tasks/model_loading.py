"""Loading registered models as data: weights and configs, never code stored in the registry.

A registered version is downloaded as files and its ``MLmodel`` is read as YAML (``yaml.safe_load``). What it may be:

- ``transformers`` flavour (the policy): the ``save_pretrained`` folder ``model/`` plus ``components/tokenizer/``;
  they are merged into one folder and read with transformers, safetensors only.
- ``python_function`` from code (the reward model): allowed only when the stored entry file is byte for byte this
  install's ``tasks/mlflow_models/reward_entry.py`` (which holds no logic: it imports the installed scorer) and no
  code paths were stored with it. Its weights are the artifact ``model`` (a folder inside the download), a one-label
  ``*ForSequenceClassification`` model, read like any other. Anything else (a pickled model, stored code of another
  install, code paths, versions registered before this format) is refused with one line saying why.

Nothing here calls ``mlflow.pyfunc.load_model``: that would run the stored entry file and put stored code paths first
on ``sys.path``; a registry writer could then run code on every machine that loads a model. The classes that predict
(``tasks/mlflow_models``) come from this install. ``rlhf serve`` checks a version the same way before it hands it to
MLflow's scoring server.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tasks.lineage import one_line
from tasks.registry import RegistryError, resolve

ENTRY = Path(__file__).parent / "mlflow_models" / "reward_entry.py"     # the only code a registered model may carry


def load_model(uri: str, kind: str | None = None, trust_remote_code: bool = False) -> "LocalModel":
    """A model from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...``, a local MLflow model folder
    (``MLmodel`` in it) or a local Hugging Face folder (``save_pretrained``). ``kind``: policy | reward (checked).
    Weights are read into memory; downloads go to a temporary folder removed before returning."""
    import rlhf.generation  # noqa: F401  (the core from this install, whatever the model folder holds)
    config = {"trust_remote_code": trust_remote_code}
    local = Path(uri)
    if local.is_dir() and not (local / "MLmodel").exists():
        return LocalModel(local, kind, config)
    if not local.is_dir() and not uri.startswith(("models:/", "runs:/")) and "://" not in uri:
        raise RegistryError(f"{uri}: not a local folder nor a models:/ or runs:/ URI")
    with tempfile.TemporaryDirectory(prefix="rlhf-model-") as dst:
        root = local if local.is_dir() else download(uri, dst)
        return LocalModel(weights_folder(root, uri, kind, Path(dst)), kind, config)


def pin(uri: str) -> str:
    """``models:/NAME@ALIAS`` (or ``/VERSION``) -> ``models:/NAME/VERSION`` as the registry resolves it now; any other
    URI unchanged."""
    if not uri.startswith("models:/"):
        return uri
    mv = resolve(uri)
    return f"models:/{mv.name}/{mv.version}"


def download(uri: str, dst: str) -> Path:
    """The files of a registered version (a ``models:/NAME@ALIAS`` is pinned to its version first)."""
    import mlflow
    uri = pin(uri)
    quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"       # no download bars on the CLI's stderr
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    except Exception as e:
        raise RegistryError(f"{uri}: cannot download: {one_line(e)}") from None
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet


def read_mlmodel(root: Path, uri: str) -> dict:
    import yaml
    try:
        meta = yaml.safe_load((root / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RegistryError(f"{uri}: no readable MLmodel: {one_line(e)}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("flavors"), dict):
        raise RegistryError(f"{uri}: MLmodel has no flavors")
    return meta


def checked(root: Path, uri: str) -> tuple[str, dict]:
    """(policy | reward, the MLmodel's flavors), from the MLmodel alone; RegistryError for anything this project
    does not load as data."""
    flavors = read_mlmodel(root, uri)["flavors"]
    if "transformers" in flavors:
        tf = flavors["transformers"] or {}
        if tf.get("code"):
            raise RegistryError(f"{uri}: stores code paths ({tf['code']}); refused: this project loads weights only")
        if tf.get("task") not in ("text-generation", "llm/v1/chat", "llm/v1/completions"):
            raise RegistryError(f"{uri}: a transformers {tf.get('task')!r} model, not a text-generation policy")
        return "policy", flavors
    pf = flavors.get("python_function") or {}
    if pf.get("code"):
        raise RegistryError(f"{uri}: stores code paths ({pf['code']}); refused: a version registered before models "
                            "were logged as data, or by another tool. Re-run its stage to register it again")
    entry = pf.get("model_code_path")
    if not entry or pf.get("loader_module") != "mlflow.pyfunc.loaders.code_model" or pf.get("python_model"):
        raise RegistryError(f"{uri}: not an rlhf model (flavors: {', '.join(flavors)}); refused: only transformers "
                            "policies and rlhf reward models load")
    stored = root / Path(str(entry)).name
    if not stored.is_file() or stored.read_bytes() != ENTRY.read_bytes():
        raise RegistryError(f"{uri}: its stored code ({Path(str(entry)).name}) differs from this install's "
                            f"tasks/mlflow_models/{ENTRY.name}; refused: loading it would run code from the registry")
    return "reward", flavors


def weights_folder(root: Path, uri: str, kind: str | None, scratch: Path) -> Path:
    """The ``save_pretrained`` folder inside an MLflow model folder; for a policy, its weights and tokenizer merged
    into a new folder under ``scratch``."""
    actual, flavors = checked(root, uri)
    if kind and actual != kind:
        raise RegistryError(f"{uri}: is a {actual} model, not a {kind} model")
    if actual == "reward":
        art = ((flavors["python_function"].get("artifacts") or {}).get("model") or {})
        rel = Path(str(art.get("path") or ""))
        folder = (root / rel).resolve()
        if not rel.parts or rel.is_absolute() or ".." in rel.parts or not folder.is_dir() \
                or not folder.is_relative_to(root.resolve()):
            raise RegistryError(f"{uri}: its artifact 'model' ({rel}) is not a folder inside the model")
        return folder
    model_dir = root / str(flavors["transformers"].get("model_binary") or "model")
    if not (model_dir / "config.json").is_file():
        raise RegistryError(f"{uri}: no {model_dir.name}/config.json")
    merged = Path(tempfile.mkdtemp(prefix="policy-", dir=scratch))
    for src in (model_dir, root / "components" / "tokenizer"):
        if src.is_dir():
            shutil.copytree(src, merged, dirs_exist_ok=True)
    return merged


class LocalModel:
    """A plain save_pretrained folder behind one interface (predict, unwrap_python_model), predicting through this
    install's classes (tasks/mlflow_models)."""

    def __init__(self, path: Path, kind: str | None, config: dict):
        from types import SimpleNamespace

        from rlhf.reward_format import is_reward_folder
        actual = "reward" if is_reward_folder(path) else "policy"
        if kind and kind != actual:
            raise RegistryError(f"{path}: is a {actual} model folder, not a {kind} model")
        if actual == "policy":
            from tasks.mlflow_models.policy_model import PolicyModel as cls
        else:
            from tasks.mlflow_models.reward_model import RewardScorer as cls
        self.kind, self.python_model = actual, cls()
        try:
            self.python_model.load_context(SimpleNamespace(artifacts={"model": str(path)}, model_config=config))
        except Exception as e:
            raise RegistryError(f"{path}: cannot load as a {actual} model: {one_line(e)}") from None

    def predict(self, data, params=None):
        return self.python_model.predict(None, data, params)

    def unwrap_python_model(self):
        return self.python_model


def servable(uri: str) -> tuple[str, str]:
    """The pinned ``models:/NAME/VERSION`` behind ``uri`` and its kind, after checking it loads as data (the same
    checks as ``load_model``); what ``rlhf serve`` hands to MLflow's scoring server."""
    pinned = pin(uri)
    with tempfile.TemporaryDirectory(prefix="rlhf-model-") as dst:
        return pinned, checked(download(pinned, dst), uri)[0]
