"""Typed configuration: params.yaml loads into frozen dataclasses (DESIGN.md invariant 3).

Every top-level section of params.yaml is one stage and maps onto one dataclass below. Unknown or misspelt keys
are errors that name the full key path (``ppo.cliprang: unknown key (did you mean 'cliprange'?)``); cross-field
rules are checked in ``__post_init__`` so an invalid config never reaches a training loop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from rlhf.config_base import (ComputeConfig, ConfigError, FieldError, LoRAConfig, SamplingConfig,  # noqa: F401
                               TrainConfig, check_ranges, check_rule)
from rlhf.config_orchestration import OrchestrationConfig


@dataclass(frozen=True)
class DataSource:
    """One stage input, read through Hugging Face ``datasets`` (rlhf/sources.py): a local file or folder, or a hub
    dataset. Empty ``path`` and ``name`` = the stage's own default (prepare: ``<data_dir>/<input>.jsonl``)."""
    path: str = ""                      # .jsonl/.json, .csv or .parquet file, or a save_to_disk folder (project-relative)
    name: str = ""                      # a hub dataset id (org/name), read only when the hub is reachable
    config: str = ""                    # the hub dataset's configuration (subset); "" = its default
    split: str = "train"                # split of a hub dataset or of a saved DatasetDict folder
    columns: dict[str, str] = field(default_factory=dict)   # their column -> ours, renamed before validation

    def __post_init__(self) -> None:
        check_rule(not (self.path and self.name), "give path (a local file or folder) or name (a hub dataset), not both")
        check_rule(not self.config or bool(self.name), "config is a hub dataset's configuration: set name too")
        check_rule(bool(self.split.strip()), "split must not be empty")
        self.check_columns(self.columns)

    @staticmethod
    def check_columns(columns: dict[str, str]) -> None:
        """A column mapping renames one to one: no empty names, no two columns onto one name."""
        check_rule(all(k.strip() and v.strip() for k, v in columns.items()), "columns: names must not be empty")
        targets = list(columns.values())
        twice = sorted({t for t in targets if targets.count(t) > 1})
        check_rule(not twice, f"columns: several columns are renamed to {twice[0]!r}" if twice else "")

    @property
    def is_set(self) -> bool:
        return bool(self.path or self.name)


@dataclass(frozen=True)
class PrepareConfig:
    """The prepare stage (rlhf/stages/prepare.py): three inputs in, JSONL splits out. Record shapes: its docstring."""
    data_dir: str = "data"              # where the default inputs live: corpus.jsonl, sft.jsonl, prompts.jsonl
    out_dir: str = "artifacts/data"
    corpus: DataSource = field(default_factory=DataSource)   # {text}
    sft: DataSource = field(default_factory=DataSource)      # {prompt, completion} or {messages}
    prompts: DataSource = field(default_factory=DataSource)  # {prompt[, split]} or {messages}
    use_corpus: bool = True             # false: no corpus is read (chat data on a pretrained model); corpus_* empty
    val_fraction: float = 0.05
    eval_fraction: float = 0.1          # prompts without a split column: share sent to eval (stable hash), rest ppo
    max_chars: int = 2000               # longer texts (and message contents) are rejected (rejects.jsonl)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule(self.use_corpus or not self.corpus.is_set, "corpus is set but use_corpus is false: drop one")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 1024
    min_frequency: int = 2

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class ModelConfig:
    """A small GPT-2 built from scratch (used when pretrain.model_path is empty)."""
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 64

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


@dataclass(frozen=True)
class PretrainConfig:
    model_path: str = ""                # a local Hugging Face checkpoint: used instead of training from scratch
    data_dir: str = "artifacts/data"
    out_dir: str = "artifacts/models/base"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6.0, lr=2e-3, checkpoint_every=100))
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class SFTConfig:
    model_path: str = "artifacts/models/base"
    data_dir: str = "artifacts/data"
    out_dir: str = "artifacts/models/sft"
    packing: bool = False               # concatenate whole examples into max_length blocks
    chat_template: str = ""             # a Jinja chat template (file path or the template itself) given to the tokenizer
                                        # and saved with the SFT model; "" = the tokenizer's own (if any)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, lr=5e-4))
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class CollectConfig:
    model_path: str = "artifacts/models/sft"
    prompts: str = "artifacts/data/prompts_annotate.jsonl"
    out_dir: str = "artifacts/collect"     # tasks.json (Label Studio import) and label_config.xml
    k: int = 4                           # responses sampled per prompt
    max_prompts: int = 0                 # 0 = all
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class AnnotateConfig:
    """The demo's simulated annotation campaign (a real campaign replaces this stage with an export)."""
    tasks: str = "artifacts/collect/tasks.json"
    corpus: str = "data/corpus.jsonl"
    out: str = "artifacts/annotations/export.json"
    n_annotators: int = 5
    noise: float = 0.15
    overlap: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule(self.overlap == 0 or self.n_annotators >= 2, "overlap > 0 needs n_annotators >= 2")


@dataclass(frozen=True)
class PreferencesConfig:
    """The preferences stage; every option of the ingest (rlhf/preferences/ingest.py, `rlhf ingest`) is here, and
    these are the defaults of both."""
    inputs: tuple[str, ...] = ("artifacts/annotations/export.json",)   # files or folders: JSON, JSONL, CSV, Parquet, Arrow
    dataset: DataSource = field(default_factory=DataSource)  # one more input: a hub dataset or a split of a folder
    columns: dict[str, str] = field(default_factory=dict)    # renames for every file of inputs (their -> ours)
    out_dir: str = "artifacts/preferences"
    format: str = "auto"                # auto (detected per file) or one of rlhf.preferences.detect.FORMATS
    max_reject_share: float = 0.05      # fail when rejected / read exceeds this (outputs are still written)
    max_field_chars: int = 20000        # longest prompt or response accepted
    rating_scale: tuple[float, ...] = (1.0, 7.0)   # inclusive range of scalar ratings
    k_factor: float = 32.0              # Elo K-factor
    initial_rating: float = 1000.0      # Elo rating of an unseen response
    elo_rounds: int = 1                 # passes over the comparisons for Elo
    ranker_key: Optional[str] = None    # Label Studio Ranker: the value.ranker key holding the order (None: the first)
    max_responses: int = 16             # responses one record may rank (more: a reject); pairs per record <= K(K-1)/2
    max_depth: int = 64                 # nesting of arrays/objects in one record (deeper: a reject)
    max_record_bytes: int = 4194304     # longest JSON Lines line or JSON array element, bytes (longer: a reject)
    refs_dir: str = ""                  # Label Studio file references are read from this folder only; "" = refused
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule(len(self.inputs) > 0 or self.dataset.is_set, "inputs must name at least one annotation export "
               "(or set dataset)")
        DataSource.check_columns(self.columns)
        check_rule(len(self.rating_scale) == 2 and self.rating_scale[0] < self.rating_scale[1],
               "rating_scale must be [low, high] with low < high")


@dataclass(frozen=True)
class RewardConfig:
    model_path: str = "artifacts/models/sft"
    data_dir: str = "artifacts/preferences"
    prompts: str = "artifacts/data/prompts_ppo.jsonl"   # reference-policy samples for reward normalisation
    out_dir: str = "artifacts/models/reward"
    loss: str = "pairwise"              # pairwise (Bradley-Terry over all K(K-1)/2 pairs) | elo (regression)
    margin: bool = False                # subtract the rank-difference margin inside the pairwise loss
    normalize: bool = True              # gain and bias so reference-policy samples score mean 0, std 1
    normalize_samples: int = 256
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5.0, batch_size=16))
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule(self.loss in ("pairwise", "elo"), f"loss must be 'pairwise' or 'elo', not {self.loss!r}")


@dataclass(frozen=True)
class ProbeConfig:
    """PPO's over-optimisation probe (rlhf/probe.py; Gao et al. 2022): before the first iteration, every ``every``
    iterations and after the last, the policy answers held-out prompts (``ppo.sampling``, a fixed seed), scored by
    the reward model PPO optimises (the proxy) and by ``judge``, against the KL to the reference."""
    every: int = 10                     # PPO iterations between probes; 0 = off. ~3% of the demo's PPO time at 10
    prompts: str = "artifacts/data/prompts_eval.jsonl"   # held-out prompts (evaluate's), never trained on
    max_prompts: int = 64               # the first N of them
    judge: str = "gold"                 # gold | reward_model | reward_model:PATH | module:function (rlhf/judges.py)
    corpus: str = "data/corpus.jsonl"   # the gold judge's fluency statistics (judge: gold)
    score_max_length: int = 64          # tokens of prompt + response the reward model reads when scoring
    seed: int = 1234                    # sampling seed, the same at every probe: rows differ by the policy only

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class PPOConfig:
    policy_path: str = "artifacts/models/sft"
    reward_path: str = "artifacts/models/reward"
    prompts: str = "artifacts/data/prompts_ppo.jsonl"
    out_dir: str = "artifacts/models/policy"
    total_episodes: int = 6400
    rollout_batch_size: int = 64        # episodes per PPO iteration
    num_mini_batches: int = 4
    grad_accum: int = 1                 # micro-batches per mini-batch
    ppo_epochs: int = 4
    lr: float = 1e-4
    lr_schedule: str = "linear"
    max_grad_norm: float = 1.0
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0           # entropy bonus: loss -= entropy_coef * mean token entropy (0 = none)
    gamma: float = 1.0
    lam: float = 0.95
    kl_estimator: str = "k1"            # k1 | k2 | k3 (Schulman, "Approximating KL divergence")
    kl_coef: float = 0.2                # initial coefficient
    adaptive_kl: bool = True
    target_kl: float = 2.0              # nats per sequence (adaptive controller)
    kl_horizon: int = 1000              # episodes; 10000 (lm-human-preferences) barely moves the coefficient in a
                                        # 6400-episode run; 1000 with target 2.0 holds diversity at every seed
                                        # with room (BENCHMARKS.md seed sweep)
    whiten_advantages: bool = True
    missing_eos_penalty: float = 1.0    # subtracted from the score of responses cut before EOS
    value_model: str = "shared"         # shared (value head on the policy trunk, the source's design) | separate
    critic_train_layers: int = -1       # separate critic: train only its top N blocks (+ final norm, head); -1 = all
    value_epochs: int = 0               # epochs (of ppo_epochs) with the value loss; 0 = all. The policy loss: all
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)   # on the policy; the reference = adapter disabled
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # proxy vs judge against KL, on held-out prompts
    log_every: int = 1
    checkpoint_every: int = 10          # PPO iterations between checkpoints; 0 = none. ~10 s of the demo's ~1 s
                                        # iterations, a save 0.05 s (docs/operations.md)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule(self.rollout_batch_size % self.num_mini_batches == 0,
               f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by num_mini_batches ({self.num_mini_batches})")
        check_rule((self.rollout_batch_size // self.num_mini_batches) % self.grad_accum == 0,
               "mini-batch size must be divisible by grad_accum")
        check_rule(self.total_episodes >= self.rollout_batch_size, "total_episodes must be >= rollout_batch_size")
        check_rule(self.kl_estimator in ("k1", "k2", "k3"), f"kl_estimator must be k1, k2 or k3, not {self.kl_estimator!r}")
        check_rule(self.value_model in ("shared", "separate"), f"value_model must be shared|separate, not {self.value_model!r}")
        check_rule(0 <= self.value_epochs <= self.ppo_epochs, f"value_epochs must be in [0, ppo_epochs={self.ppo_epochs}]")
        check_rule(self.critic_train_layers == -1 or self.lora.r == 0,
               "critic_train_layers applies to full fine-tuning; with lora.r > 0 the critic trains LoRA adapters")
        check_rule(self.lr_schedule in ("constant", "linear", "cosine"), "lr_schedule must be constant|linear|cosine")


@dataclass(frozen=True)
class EvaluateConfig:
    sft_path: str = "artifacts/models/sft"
    policy_path: str = "artifacts/models/policy"
    reward_path: str = "artifacts/models/reward"
    prompts: str = "artifacts/data/prompts_eval.jsonl"
    corpus: str = "data/corpus.jsonl"
    out_dir: str = "artifacts/evaluate"
    judge: str = "gold"                 # gold | reward_model | reward_model:PATH | module:function (rlhf/judges.py)
    heldout_preferences: str = ""       # rankings (the preferences stage's rankings_val.jsonl): reward-model accuracy
    max_prompts: int = 256
    # Pairs whose gold scores differ by less than this are ties for the reward-model accuracy: below what the
    # simulated annotators (noise ~0.15) can resolve. reward_model_accuracy_all counts every non-equal pair.
    gold_tie_margin: float = 0.1
    rm_pairs_k: int = 4                 # SFT responses per prompt for the reward-model accuracy (all pairs of each)
    score_max_length: int = 64          # tokens of prompt + response the reward model reads when scoring
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    seed: int = 1234

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class PromoteConfig:
    """Promotion gates (flows/promote.py) and how they are measured. A threshold of null turns its gate off; a gate
    whose number cannot be measured (no gold judge, no reward model) is skipped and the report says so. A promotion
    needs at least one gate measured and none failed."""
    min_win_rate: Optional[float] = 0.5            # policy: gold-judge win rate vs baseline, ties count 1/2
    max_kl: Optional[float] = 6.0                  # policy: KL(challenger || reference), nats per response
    min_gold_gain: Optional[float] = 0.0           # policy: mean gold score, challenger - baseline
    min_reward_model_accuracy: Optional[float] = 0.55  # policy: held-out accuracy of the reward model it used
    reward_min_accuracy: Optional[float] = 0.6     # reward model: held-out pairwise accuracy vs the gold judge
    reward_min_accuracy_gain: Optional[float] = 0.0    # reward model: accuracy - champion's accuracy (same pairs)
    max_prompts: int = 128                         # held-out prompts used (evaluate.prompts)
    rm_pairs_k: int = 4                            # responses per prompt for the reward-model accuracy
    seed: int = 4321

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class PipelineConfig:
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    preferences: PreferencesConfig = field(default_factory=PreferencesConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)   # where stages run
    # Sections of stages this file does not know: a stage module rlhf/stages/<name>.py that defines its own
    # ``Config`` dataclass (so a new stage needs no edit here). Filled by load_params; not a params.yaml key.
    extra_stages: dict = field(default_factory=dict, compare=False, repr=False)

    def section(self, name: str) -> Any:
        """The config of section ``name`` (a stage's, or ``promote``)."""
        if name in self.extra_stages:
            return self.extra_stages[name]
        if name == "extra_stages" or name not in {f.name for f in dataclasses.fields(self)}:
            raise ConfigError(f"{name}: no such section in params")
        return getattr(self, name)


# Loading and converting (rlhf/config_loader.py), importable from here as the one configuration API.
from rlhf.config_loader import flatten, from_dict, load_params, to_dict  # noqa: E402,F401
