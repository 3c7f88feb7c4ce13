"""A NaN anywhere in training stops the stage with one clear line naming the stage and step, before the weights are
updated or anything is saved or registered (DESIGN invariant 9)."""
from __future__ import annotations

import pytest
import torch

from rlhf.config import TrainConfig
from rlhf.finite import NonFiniteError
from rlhf.generation import draw
from rlhf.train_lm import Example, train_causal_lm
from rlhf.train_reward import set_normalization


def poison_after(model, calls: int):
    """Make the model's logits NaN from its ``calls``-th forward on (a test hook on the real model)."""
    seen = [0]

    def hook(_module, _inputs, output):
        seen[0] += 1
        if seen[0] >= calls:
            output.logits = output.logits * float("nan")
        return output
    return model.register_forward_hook(hook)


def test_a_nan_loss_stops_sft_before_the_update(tiny_lm, tok):
    ids = tok("the film was good")["input_ids"] + [tok.eos_token_id]
    examples = [Example(ids, [0] * 2 + [1] * (len(ids) - 2))] * 8
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-3, log_every=1)
    poison_after(tiny_lm, 3)                       # steps 1 and 2 train, step 3's loss is NaN
    before = None

    def keep(step, live):
        nonlocal before
        before = {k: v.clone() for k, v in tiny_lm.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"gradient norm at optimiser step 3 is nan"):
        train_causal_lm(tiny_lm, examples, cfg, tok.pad_token_id, on_step_end=keep)
    after = tiny_lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)        # step 3 never updated a weight
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_sampling_from_nan_probabilities_raises():
    probs = torch.tensor([[0.5, 0.5], [float("nan"), 0.5]])
    with pytest.raises(NonFiniteError, match="not finite"):
        draw(probs, torch.Generator().manual_seed(0))


class _Scored(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))


@pytest.mark.parametrize("scores", [[0.3], [], [1.0, float("nan")], [0.7, 0.7, 0.7]])
def test_reward_normalisation_refuses_what_it_cannot_normalise(scores):
    with pytest.raises(NonFiniteError, match="reward normalisation"):
        set_normalization(_Scored(), torch.tensor(scores))


def test_a_nan_reward_stops_ppo_before_any_update(tok, tiny_lm):
    from tests.component.test_ppo import make_trainer
    trainer = make_trainer(tok, tiny_lm)
    rm = trainer.models.reward_model
    with torch.no_grad():
        rm.gain.fill_(float("nan"))                          # every normalised score becomes NaN
    before = {k: v.clone() for k, v in trainer.models.policy.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"objective/scores at PPO iteration 1 is nan"):
        trainer.step()
    after = trainer.models.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and trainer.iteration == 0


def fake_stage(monkeypatch, tmp_path, run):
    """A stage module rlhf.stages.nanstage whose run is ``run``, a params file for it and an MLflow store."""
    import dataclasses
    import importlib.machinery
    import sys
    import types

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 3
    module = types.ModuleType("rlhf.stages.nanstage")
    module.__spec__ = importlib.machinery.ModuleSpec("rlhf.stages.nanstage", None)
    module.Config, module.run = Config, run
    monkeypatch.setitem(sys.modules, "rlhf.stages.nanstage", module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text("nanstage: {steps: 3}\n")


def run_failing_stage(tmp_path) -> str:
    import mlflow
    from mlflow import MlflowClient

    from tasks.stage import run_stage
    try:
        with pytest.raises(NonFiniteError) as e:
            run_stage("nanstage")
    finally:
        assert mlflow.active_run() is None                 # the stage's run was closed (as failed)
        mlflow.set_tracking_uri(None)                      # back to what the environment says, for later tests
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
    (run,) = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert run.info.run_name == "nanstage" and run.info.status == "FAILED"
    assert not (tmp_path / "metrics" / "nanstage.json").exists()
    return str(e.value)


def test_the_stage_error_is_one_line_naming_stage_and_step_and_nothing_is_registered(tmp_path, monkeypatch):
    def run(cfg, on_log=None):
        raise NonFiniteError("the gradient norm at optimiser step 2 is nan, not a finite number")
    fake_stage(monkeypatch, tmp_path, run)
    assert run_failing_stage(tmp_path) == ("nanstage: the gradient norm at optimiser step 2 is nan, not a finite "
                                           "number; the stage stopped: nothing was saved or registered")


def test_a_non_finite_final_metric_stops_the_stage(tmp_path, monkeypatch):
    from rlhf.stages.common import StageResult
    fake_stage(monkeypatch, tmp_path, lambda cfg, on_log=None: StageResult({"val_loss": float("inf"), "ok": 1.0}))
    assert run_failing_stage(tmp_path) == "nanstage: final metrics are not finite: val_loss=inf; nothing registered"
