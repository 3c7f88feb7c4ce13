"""ppo: fine-tune the SFT policy against the reward model with a KL penalty to the frozen SFT reference.

Checkpoints every ``ppo.checkpoint_every`` iterations into ``<out_dir>.ckpt/`` (policy and value weights, optimizer,
scheduler, KL controller, iteration, RNG states, logged rows) and resumes from the newest one, with the same result
as an uninterrupted run; runs data-parallel under torchrun / accelerate launch (rank 0 writes the model).
``ppo.probe`` (rlhf/probe.py): before the first iteration, every ``probe.every`` iterations and after the last, rank 0
scores the policy's answers to held-out prompts with the reward model and the judge against the KL to the reference
(Gao et al.'s over-optimisation curve): MLflow ``probe/*`` at the iteration, ``plots/ppo/probe.json``; the rows
travel in the checkpoints, and the probe leaves training exactly as it would be without it.
``ppo.compute`` / ``ppo.lora`` (rlhf/accel.py): device, bf16, gradient checkpointing; with LoRA the reference policy is
the policy itself with its adapter disabled, and the adapter is merged into the saved model."""
from __future__ import annotations

from pathlib import Path

from rlhf import accel, distributed
from rlhf.checkpoint import CheckpointManager, inputs_signature, resume, stage_fingerprint
from rlhf.config import PPOConfig
from rlhf.chat import check_prompts
from rlhf.data import load_jsonl
from rlhf.judges import JudgeError, check_spec, load_judge
from rlhf.modeling import CriticModel, PolicyWithValueHead, load_causal_lm, load_tokenizer
from rlhf.ppo import PPOModels, PPOTrainer
from rlhf.reward_scoring import load_scorer
from rlhf.limits import check_fits, check_sampling
from rlhf.probe import due as probe_due, probe
from rlhf.stages.common import Recorder, StageResult, note, save_tokenizer_and_model, seed_everything
from rlhf.tempdirs import atomic_output_dir


def build_models(cfg: PPOConfig, tok, device=None) -> PPOModels:
    """Policy (+ value head), frozen reference, frozen reward model (a RewardScorer: rlhf/reward_scoring.py) and the
    optional critic, on ``device`` with the ``ppo.compute`` switches. LoRA (``ppo.lora.r`` > 0): adapters on the
    policy (and on the critic's trunk); the reference is the same weights with the adapter disabled, so no second
    copy of the model is held."""
    import torch

    device = device or torch.device("cpu")
    lm = load_causal_lm(cfg.policy_path, tok, dtype=cfg.compute.dtype)
    if cfg.lora.r:
        lm = accel.apply_lora(lm, cfg.lora, causal_lm=True)
        ref = accel.AdapterDisabled(lm)
    else:
        ref = accel.prepare(load_causal_lm(cfg.policy_path, tok, dtype=cfg.compute.dtype).eval(), device, cfg.compute, trainable=False)
    policy = accel.prepare(PolicyWithValueHead(lm), device, cfg.compute, hf=lm)
    reward = load_scorer(cfg.reward_path, tok, device, cfg.compute)
    if not reward.fast:
        note(f"ppo: {cfg.reward_path} has a tokenizer of its own: responses are decoded and re-encoded with its chat "
             f"template for scoring")
    value_model = None
    if cfg.value_model == "separate":
        value_model = build_critic(cfg, tok, reward.fast)
        value_model.train_top_layers(cfg.critic_train_layers)
        if cfg.lora.r:
            value_model.trunk = accel.apply_lora(value_model.trunk, cfg.lora, causal_lm=False)
        accel.prepare(value_model, device, cfg.compute, hf=value_model.trunk)
    return PPOModels(policy, ref, reward, value_model)


def build_critic(cfg: PPOConfig, tok, shares_tokenizer: bool) -> CriticModel:
    """The separate critic: from the reward model (TRL's PPO default: its trunk, its head at every position) when
    it reads the policy's token ids; otherwise from the policy's own trunk with a fresh head (logged)."""
    if shares_tokenizer:
        return CriticModel.from_reward_model(cfg.reward_path)
    note(f"ppo: the critic starts from the policy's trunk ({cfg.policy_path}) with a fresh value head, not from the "
         f"reward model (its tokenizer differs from the policy's)")
    return CriticModel.from_causal_lm_path(cfg.policy_path, tok)


def check_probe(cfg: PPOConfig) -> None:
    """The probe's settings, before any weights load: its judge, the judge's corpus, its prompts, its lengths."""
    p = cfg.probe
    if not p.every:
        return
    kind = check_spec(p.judge, "ppo.probe")
    if kind == "gold" and not Path(p.corpus).is_file():
        raise JudgeError(f"ppo.probe.corpus: {p.corpus} not found (the gold judge learns its fluency from it; "
                         f"ppo.probe.every: 0 turns the probe off)")
    if not Path(p.prompts).is_file():
        raise FileNotFoundError(f"ppo.probe.prompts: {p.prompts} not found (ppo.probe.every: 0 turns the probe off)")
    check_fits(cfg.reward_path, p.score_max_length, "ppo.probe.score_max_length")
    if p.judge in ("reward_model", f"reward_model:{cfg.reward_path}"):
        note("ppo: ppo.probe.judge is the reward model PPO optimises: the judge curve repeats the proxy's "
             "(give a held-out reward_model:PATH or module:function to see over-optimisation)")


def probe_inputs(cfg: PPOConfig) -> list[str]:
    """The files the probe reads (the same on every rank: part of the checkpoint's fingerprint)."""
    p = cfg.probe
    if not p.every:
        return []
    if p.judge == "gold":
        return [p.prompts, p.corpus]
    return [p.prompts, p.judge.split(":", 1)[1]] if p.judge.startswith("reward_model:") else [p.prompts]


class Probe:
    """The probe's prompts, judge and rows; ``__call__(iteration)`` adds a row when one is due (rank 0 only)."""

    def __init__(self, cfg: PPOConfig, models: PPOModels, tok, device, n_iterations: int, on_log, active: bool):
        self.cfg, self.models, self.tok, self.n_iterations, self.on_log = cfg, models, tok, n_iterations, on_log
        self.rows: list[dict] = []
        self.active = active and cfg.probe.every > 0
        if not self.active:
            return
        p = cfg.probe
        self.prompts = [r["prompt"] for r in load_jsonl(p.prompts)][: p.max_prompts]
        if not self.prompts:
            raise ValueError(f"ppo.probe.prompts: {p.prompts} holds no prompt")
        self.judge = load_judge(p.judge, p.corpus, cfg.reward_path, lambda path: models.reward_model
                                if path == cfg.reward_path else load_scorer(path, device=device, compute=cfg.compute),
                                p.score_max_length, key="ppo.probe")

    def __call__(self, iteration: int) -> None:
        if not (self.active and probe_due(iteration, self.cfg.probe.every, self.n_iterations)):
            return
        m, p = self.models, self.cfg.probe
        row = probe(m.policy.lm, m.ref_model, self.tok, m.reward_model, self.judge, self.prompts, self.cfg.sampling,
                    p.seed, p.score_max_length)
        self.rows.append({"step": iteration, **row})
        if self.on_log:
            self.on_log(iteration, row)


def trainable(models: PPOModels) -> dict:
    """The modules a checkpoint holds (the reference and the reward model are frozen inputs)."""
    out = {"policy": models.policy}
    if models.value_model is not None:
        out["value_model"] = models.value_model
    return out


def run(cfg: PPOConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    check_sampling(cfg.policy_path, cfg.sampling, "ppo")                             # before any weights load
    check_probe(cfg)
    dist = distributed.init()
    distributed.refuse_sharded(dist, "the ppo stage (ranks sample responses of different lengths, and FSDP needs "
                                     "the same forward calls on every rank)")
    device = accel.resolve_device(cfg.compute.device, dist.local_rank, "ppo.compute.device")
    tok = load_tokenizer(cfg.policy_path)
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    check_prompts(tok, prompts, cfg.prompts)
    rec = Recorder(on_log if dist.is_main else None)
    models = build_models(cfg, tok, device)
    trainer = PPOTrainer(cfg, models, tok, prompts, on_log=rec, dist=dist)
    probed = Probe(cfg, models, tok, device, trainer.n_iterations, on_log if dist.is_main else None, dist.is_main)
    inputs = inputs_signature(cfg.policy_path, cfg.reward_path, cfg.prompts, *probe_inputs(cfg))
    ckpt = CheckpointManager(cfg.out_dir, cfg.checkpoint_every, is_main=dist.is_main,
                             fingerprint=stage_fingerprint(cfg, dist.layout, inputs, __name__))
    state = resume(ckpt, trainable(models), rec)
    if state is not None:
        trainer.load_state_dict(state)
        probed.rows = list(state.get("probe_rows", []))
    else:
        probed(0)                                       # the reference's point: where the curve starts

    def on_iteration_end(iteration: int) -> None:
        probed(iteration)                               # before the save: its row is in the checkpoint
        if ckpt.due(iteration, trainer.n_iterations):
            ckpt.save(iteration, trainable(models), {**trainer.state_dict(), "probe_rows": probed.rows}, rec.rows)

    last = trainer.train(on_iteration_end=on_iteration_end)
    distributed.assert_in_sync(trainer.models.policy, dist)
    if dist.is_main:
        with atomic_output_dir(cfg.out_dir) as tmp:
            trainer.models.policy.lm = accel.merge_lora(trainer.models.policy.lm, tmp / accel.ADAPTER_DIR)
            save_tokenizer_and_model(trainer.models.policy, tok, tmp)
    ckpt.clear()
    distributed.barrier(dist)
    keep = ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy", "val/eos_rate",
            "objective/kl_coef", "policy/approxkl_avg", "policy/clipfrac_avg")
    metrics = {k.replace("/", "_"): last[k] for k in keep if k in last}
    metrics["iterations"] = trainer.iteration
    rows = rec.rows
    metrics["mean_episodes_per_s"] = sum(r["perf/episodes_per_s"] for r in rows) / max(len(rows), 1)
    if probed.rows:                                     # the last probe: the trained policy on held-out prompts
        metrics.update({k.replace("/", "_"): v for k, v in probed.rows[-1].items() if k != "step"})
    # probe.json is written even when the probe is off (an empty list): dvc.yaml declares it
    return StageResult(metrics, plots={"ppo": rows, "probe": probed.rows}, outputs={"model": cfg.out_dir})
