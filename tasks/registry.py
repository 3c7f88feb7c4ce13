"""The model registry: every policy and reward model a stage trains becomes an MLflow model version with its lineage
and a model card; aliases say which version serves (``champion``) and which waits for the gates (``challenger``).

- Models are data: the policy in MLflow's transformers flavour (weights, tokenizer, generation config), the reward
  model as its ``save_pretrained`` folder with a pyfunc whose stored entry file only imports this install's scorer.
  tasks/model_loading.py loads both without running anything stored in the registry; nothing is unpickled.
- Lineage tags on each version (``lineage.*``): git commit, whether tracked code/params were modified, the data.dvc
  hash, the DVC hash of every dependency of the stage and of the model folder itself (computed by DVC from the
  workspace when the model is registered: the same values ``dvc commit`` writes to dvc.lock right after the stage),
  the stage params, the MLflow run and parent run. ``metrics.*`` tags hold the stage's final metrics.
- Aliases and tags only (no deprecated stages). The registered model keeps ``champion_history`` (earlier champions,
  oldest first) and ``previous_champion`` so ``rollback`` can undo a promotion.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from tasks.lineage import data_dvc_md5, dvc_hashes, one_line

POLICY_NAME = "rlhf-policy"
REWARD_NAME = "rlhf-reward-model"
CHALLENGER, CHAMPION = "challenger", "champion"
HISTORY_TAG, PREVIOUS_TAG = "champion_history", "previous_champion"
KINDS = {"policy": POLICY_NAME, "reward": REWARD_NAME}
KIND_STAGE = {"policy": "ppo", "reward": "reward"}
_MODELS = Path(__file__).parent / "mlflow_models"
# Explicit requirements: MLflow's inferred defaults pull torchvision (STACK-NOTES trap 2).
PIP_REQUIREMENTS = ["torch", "transformers", "safetensors", "tokenizers", "pandas"]
# The policy's serving params: MLflow passes them to the transformers pipeline (generate keyword arguments).
POLICY_PARAMS = {"max_new_tokens": ("long", 24), "temperature": ("double", 1.0), "top_k": ("long", 0),
                 "top_p": ("double", 1.0), "do_sample": ("boolean", True)}
EXAMPLE_PROMPT, EXAMPLE_RESPONSE = "the acting in this film", "was superb."
MAX_DESCRIPTION = 5000                       # the SQL store's limit for a model version description


class RegistryError(RuntimeError):
    """A registry problem the user can act on; the message is one line."""


# ---------------------------------------------------------------------------------------------- connection
def connect(root: str | Path = ".", must_exist: bool = True) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI (or the embedded ``mlflow.db`` under ``root``) and check it answers."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        import urllib.request
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                ok = r.status == 200
        except OSError as e:
            raise RegistryError(f"no MLflow server at {uri} (MLFLOW_TRACKING_URI): "
                                f"{one_line(getattr(e, 'reason', e))}") from None
        if not ok:
            raise RegistryError(f"MLflow server at {uri} is not healthy")
    elif uri.startswith("sqlite:///") and must_exist and not Path(uri[len("sqlite:///"):]).exists():
        raise RegistryError(f"no MLflow store at {uri[len('sqlite:///'):]}: run the pipeline first "
                            "or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    return uri


# ---------------------------------------------------------------------------------------------- lineage
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def lineage_tags(model_dir: str | Path, stage: str, run_id: str | None) -> dict[str, str]:
    """Every ``lineage.*`` and ``metrics.*`` tag of a new version (see the module docstring)."""
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!metrics", ":!plots")
    tags = {"lineage.stage": stage, "lineage.git_commit": _git("rev-parse", "HEAD"),
            "lineage.git_dirty": str(bool(dirty)).lower(), "lineage.data_dvc_md5": data_dvc_md5()}
    if run_id:
        run = MlflowClient().get_run(run_id)
        params = dict(sorted(run.data.params.items()))
        tags.update({"lineage.run_id": run_id, "lineage.experiment_id": run.info.experiment_id,
                     "lineage.parent_run_id": run.data.tags.get("mlflow.parentRunId", ""),
                     "lineage.params_md5": hashlib.md5(json.dumps(params).encode()).hexdigest(),
                     "lineage.params": params_json(params)})
        tags.update({f"metrics.{k[len('final/'):]}": f"{v:.6g}" for k, v in run.data.metrics.items()
                     if k.startswith("final/")})
    tags.update(dvc_hashes(stage, model_dir))
    return tags


def params_json(params: dict, limit: int = 4900) -> str:
    """Compact JSON of the params, within a tag value's size; the largest values are shortened when it is not."""
    text = json.dumps(params, separators=(",", ":"))
    for _ in range(64):
        if len(text) <= limit or not params:
            break
        key = max(params, key=lambda k: len(str(params[k])))
        params = {**params, key: str(params[key])[: max(len(str(params[key])) // 2, 8)] + "..."}
        text = json.dumps(params, separators=(",", ":"))
    return text[:limit]                                   # still too long: cut (parse_params then gives {})


def parse_params(tags: dict[str, str]) -> dict:
    try:
        return json.loads(tags.get("lineage.params") or "{}")
    except ValueError:
        return {}


def reward_model_of(policy_tags: dict[str, str], reward_path: str | None) -> str | None:
    """The registered reward-model version a policy was trained against: the one whose model hash equals the hash
    of the policy stage's reward dependency."""
    dep = policy_tags.get(f"lineage.dep.{reward_path}") if reward_path else None
    if not dep:
        return None
    try:
        versions = MlflowClient().search_model_versions(f"name='{REWARD_NAME}'")
    except Exception:
        return None
    hits = [v for v in versions if (v.tags or {}).get("lineage.model_md5") == dep]
    return str(max(int(v.version) for v in hits)) if hits else None


# ---------------------------------------------------------------------------------------------- model card
REWARD_CARD = [  # rlhf/reward_format.py: what a reward folder is, for users of transformers alone
    "## Load with transformers", "",
    "The artifact `model` is a one-label `*ForSequenceClassification` folder with its tokenizer: "
    "`AutoModelForSequenceClassification.from_pretrained(folder)` loads it. The normalised score is "
    "`logits[:, 0] + config.rlhf_reward[\"bias\"]` (the gain is folded into `score.weight`; the head has no bias "
    "term, so the bias is recorded in the config). Input: the prompt rendered with the chat template and the "
    "generation prompt, the response, its end-of-turn token.", ""]


def model_card(name: str, version: str | None, kind: str, tags: dict[str, str]) -> str:
    """A markdown model card: what it is, how to load and serve it, metrics, lineage, how to reproduce, params.
    ``version`` None: the card logged with the model, before the registry numbers it."""
    commit = tags.get("lineage.git_commit") or "<commit>"
    metrics = {k[len("metrics."):]: v for k, v in sorted(tags.items()) if k.startswith("metrics.")}
    lineage = {k: v for k, v in sorted(tags.items()) if k.startswith("lineage.") and k != "lineage.params"}
    params = parse_params(tags)
    what = ("policy (causal LM): predict({prompt}) -> sampled response" if kind == "policy"
            else "reward model: predict({prompt, response[, ended]}) -> normalised score")
    use = ('generate --prompt "the acting in this film"' if kind == "policy" else "score --prompt P --response R")
    uri = f"models:/{name}/{version or '<version>'}"
    load = (f'mlflow.transformers.load_model("{uri}")   # a transformers text-generation pipeline' if kind == "policy"
            else f'mlflow.pyfunc.load_model("{uri}")   # needs rlhf-pipeline installed')
    lines = [f"# {name}" + (f" v{version}" if version else ""), "",
             f"{what}. Weights: safetensors (`save_pretrained`), loaded as data.", "",
             "## Use", "", "```", f"rlhf {use.split()[0]} --model {uri} {use.split(' ', 1)[1]}", load,
             f"rlhf serve --model {uri} --port 5001", "```", "",
             *(REWARD_CARD if kind == "reward" else []), "## Metrics (final, stage run)", "",
             "| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in metrics.items()], "",
             "## Lineage", "", "| tag | value |", "|---|---|", *[f"| {k} | `{v}` |" for k, v in lineage.items()], "",
             "## Reproduce", "", "```", f"git checkout {commit} && dvc checkout   # code, params, dvc.lock, data",
             f"dvc repro {tags.get('lineage.stage', '')}", "```", "", "## Params", "", "| param | value |", "|---|---|",
             *[f"| {k} | {v} |" for k, v in params.items()]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- registration
def signature(kind: str):
    """Policy: text in, text out, with the generation settings as params (MLflow passes them to the transformers
    pipeline). Reward model: (prompt, response[, ended]) in, one normalised score out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
    if kind == "policy":
        return ModelSignature(
            inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
            params=ParamSchema([ParamSpec(k, t, v) for k, (t, v) in POLICY_PARAMS.items()]))
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "response"),
                       ColSpec("boolean", "ended", required=False)]),
        outputs=Schema([ColSpec("double", "score")]), params=ParamSchema([ParamSpec("max_length", "long", 64)]))


def _log_policy(model_dir: str, name: str, card: str):
    """The policy in MLflow's transformers flavour: weights, tokenizer (chat template included) and generation
    config as files, no code; ``mlflow.transformers.load_model`` and ``mlflow models serve`` need only mlflow and
    transformers. A model with a chat template is logged for MLflow's ``llm/v1/chat`` task (OpenAI-style chat
    completions: messages in, the template applied by the tokenizer), any other for ``text-generation``.
    (MLflow 3.17's local-checkpoint path fails on transformers 5, so the model is loaded first.)"""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    common = dict(pip_requirements=PIP_REQUIREMENTS, registered_model_name=name,
                  model_card=ModelCard("---\nlicense: other\n---\n" + card))   # given: MLflow asks no hub for one
    if getattr(tok, "chat_template", None):
        return mlflow.transformers.log_model(    # MLflow writes the chat signature
            {"model": model, "tokenizer": tok}, name="policy", task="llm/v1/chat",
            input_example={"messages": [{"role": "user", "content": EXAMPLE_PROMPT}], "max_tokens": 4}, **common)
    return mlflow.transformers.log_model(
        {"model": model, "tokenizer": tok}, name="policy", task="text-generation", signature=signature("policy"),
        input_example=([EXAMPLE_PROMPT], {"max_new_tokens": 4}),
        # return only the completion; sample (the pipeline's own default is the model's generation_config)
        model_config={"return_full_text": False, "do_sample": True}, **common)


def _log_reward(model_dir: str, name: str):
    """The reward model: its folder is a one-label ``*ForSequenceClassification`` model (artifact ``model``); the
    pyfunc scores (prompt, response) through this install's scorer: the stored entry file only imports it."""
    import pandas as pd
    return mlflow.pyfunc.log_model(
        name="reward", python_model=str(_MODELS / "reward_entry.py"), artifacts={"model": str(model_dir)},
        pip_requirements=PIP_REQUIREMENTS + ["rlhf-pipeline"], signature=signature("reward"),
        input_example=pd.DataFrame({"prompt": [EXAMPLE_PROMPT], "response": [EXAMPLE_RESPONSE]}),
        registered_model_name=name,
        # Declared so a user can turn it on at load time (MLflow ignores load-time keys not declared here).
        model_config={"trust_remote_code": False})


def log_and_register(model_dir: str, name: str, kind: str, tags: dict | None = None) -> str:
    """Log ``model_dir`` in the active run (policy: transformers flavour; reward model: the scoring pyfunc), register
    it with alias ``challenger``, lineage tags and a model card; returns the new version number."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    tags = {k: str(v) for k, v in (tags or {}).items()}
    stage = tags.get("stage") or KIND_STAGE[kind]
    active = mlflow.active_run()
    run_id = tags.get("run_id") or (active.info.run_id if active else None)
    tags.update(lineage_tags(model_dir, stage, run_id))
    if kind == "policy":
        rm = reward_model_of(tags, parse_params(tags).get("reward_path"))
        if rm:
            tags["lineage.reward_model_version"] = rm
    client = MlflowClient()
    info = (_log_policy(model_dir, name, model_card(name, None, kind, tags)) if kind == "policy"
            else _log_reward(model_dir, name))
    version = str(info.registered_model_version)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    card = model_card(name, version, kind, tags)
    client.update_model_version(name, version, description=card[:MAX_DESCRIPTION])
    if active:
        mlflow.log_text(card, f"model_card/{name}-v{version}.md")
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


# ---------------------------------------------------------------------------------------------- aliases
def version_by_alias(name: str, alias: str):
    """The model version an alias points to, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def history(name: str) -> list[str]:
    """Earlier champions of ``name``, oldest first."""
    tag = (MlflowClient().get_registered_model(name).tags or {}).get(HISTORY_TAG, "")
    return [v for v in tag.split(",") if v]


def _set_history(name: str, versions: list[str]) -> None:
    client = MlflowClient()
    versions = versions[-200:]
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(versions))
    if versions:
        client.set_registered_model_tag(name, PREVIOUS_TAG, versions[-1])
    else:
        client.delete_registered_model_tag(name, PREVIOUS_TAG)


def set_champion(name: str, version: str) -> str | None:
    """Point ``champion`` at ``version``; the replaced champion is pushed on the history. Returns it (or None)."""
    current = version_by_alias(name, CHAMPION)
    previous = str(current.version) if current else None
    if previous == str(version):
        return previous
    if previous:
        stack = history(name)
        if not stack or stack[-1] != previous:     # a retry after a failure below does not push it twice
            _set_history(name, stack + [previous])
    MlflowClient().set_registered_model_alias(name, CHAMPION, str(version))
    return previous


def rollback(name: str = POLICY_NAME) -> dict:
    """Point ``champion`` back at the previous champion; the rolled-back version is tagged. Returns what moved."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:
        raise RegistryError(f"no registered model {name!r}") from None
    stack = history(name)
    current = version_by_alias(name, CHAMPION)
    if not stack:
        raise RegistryError(f"{name}: no previous champion to roll back to"
                            + (f" (champion is v{current.version})" if current else " (no champion)"))
    target = stack.pop()
    client.set_registered_model_alias(name, CHAMPION, target)
    _set_history(name, stack)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if current:
        client.set_model_version_tag(name, str(current.version), "promotion.rolled_back", now)
    client.set_model_version_tag(name, target, "promotion.restored", now)
    return {"model": name, "champion": target, "rolled_back": str(current.version) if current else None,
            "previous_champion": stack[-1] if stack else None}


# ---------------------------------------------------------------------------------------------- loading
def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> (name, alias, version)."""
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.partition("/")
    return name, None, version or None


def resolve(uri: str):
    """The model version behind a ``models:/`` URI; one-line RegistryError when the model, alias or version is
    unknown."""
    from mlflow.exceptions import MlflowException
    name, alias, version = parse_model_uri(uri)
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"{uri}: no registered model {name!r}") from None
    if alias:
        mv = version_by_alias(name, alias)
        if mv is None:
            known = ", ".join(sorted(model.aliases or {})) or "none"
            raise RegistryError(f"{uri}: {name} has no alias {alias!r} (aliases: {known})")
        return mv
    try:
        return client.get_model_version(name, version or "")
    except MlflowException:
        raise RegistryError(f"{uri}: {name} has no version {version!r}") from None
