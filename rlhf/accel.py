"""Hardware switches of the training stages: device placement, bf16 mixed precision, gradient checkpointing and LoRA.

All four are configuration (``<stage>.compute`` and ``<stage>.lora`` in params.yaml); the defaults (auto device, fp32,
no checkpointing, no LoRA) are the CPU demo's settings, and with them every function here leaves a model as it is.

- Device: ``auto`` picks CUDA when it is there (rank r of a multi-process run takes ``cuda:<LOCAL_RANK>``), else the
  CPU. Models are moved once; the loops move each batch to the model's device (``model_device``). Every random draw
  stays on CPU generators, so a seeded run draws the same numbers on any device.
- bf16: autocast around the model's forward, outputs cast back to fp32 (the scheme of accelerate's
  ``mixed_precision="bf16"``: ``prepare`` wraps ``forward`` in autocast and ``convert_outputs_to_fp32``); weights,
  gradients and the optimiser state stay fp32, and log-probs, losses and advantages are computed in fp32.
- Gradient checkpointing: Hugging Face's own switch, non-reentrant (works with frozen embeddings under LoRA); it is
  active only in training mode, so sampling keeps its KV cache.
- LoRA (peft): adapters on the attention/MLP projections, the base weights frozen. In PPO the reference policy is the
  same model with the adapter disabled (peft's ``disable_adapter``), not a second copy; the value and reward heads
  stay fully trainable. At the end the adapter is merged into the base weights, so the stage's output is a plain
  Hugging Face model as without LoRA (the adapter alone is saved next to it, in ``lora_adapter/``).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

ADAPTER_DIR = "lora_adapter"


class HardwareError(RuntimeError):
    """A compute setting this machine cannot honour (no CUDA, no bf16, no peft); the message names the key."""


# -- device ---------------------------------------------------------------------------------------------------------
def resolve_device(name: str, local_rank: int = 0, key: str = "compute.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> a torch.device this machine has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HardwareError(f"{key}: {name!r} asked for, but torch {torch.__version__} sees no CUDA device "
                                "(a CPU build of torch, or no GPU); use 'auto' or 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HardwareError(f"{key}: 'mps' asked for, but this machine has no MPS device")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(device: torch.device, *tensors: torch.Tensor):
    """Move tensors to ``device`` (a no-op on the same device)."""
    return tuple(t.to(device, non_blocking=True) for t in tensors)


# -- bf16 autocast --------------------------------------------------------------------------------------------------
def _to_fp32(obj):
    """Cast floating tensors in a model output (tensor, tuple, ModelOutput/dict) back to fp32; caches untouched."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_fp32(o) for o in obj)
    if isinstance(obj, dict):                           # transformers' ModelOutput is an OrderedDict
        for k in list(obj.keys()):
            if k not in ("past_key_values", "cache"):
                obj[k] = _to_fp32(obj[k])
        return obj
    return obj


def check_bf16(device: torch.device, key: str = "compute.precision") -> None:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HardwareError(f"{key}: bf16 asked for, but {torch.cuda.get_device_name(device)} has no bf16 support; "
                            "use fp32")


def autocast_forward(module: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Run ``module.forward`` under bf16 autocast with fp32 outputs (precision ``bf16``); ``fp32`` changes nothing.
    Idempotent. The parameters stay fp32, so the optimiser, checkpoints and saved models are unchanged."""
    if precision == "fp32" or getattr(module, "_rlhf_autocast", False):
        return module
    check_bf16(device)
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        return _to_fp32(out)

    module.forward = forward
    module._rlhf_autocast = True
    return module


# -- gradient checkpointing -----------------------------------------------------------------------------------------
def hf_model(module: nn.Module) -> nn.Module:
    """The Hugging Face PreTrainedModel inside a data-parallel and/or peft wrapper (or the module itself)."""
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(module, DistributedDataParallel):
        module = module.module
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def enable_gradient_checkpointing(module: nn.Module, key: str = "compute.gradient_checkpointing") -> None:
    model = hf_model(module)
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise HardwareError(f"{key}: {type(model).__name__} does not support gradient checkpointing")
    # Non-reentrant: gradients reach LoRA adapters even though the (frozen) embeddings' outputs need no grad.
    # transformers >= 5.2x renamed the switch (activation_checkpointing_enable); older releases have only the old name.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# -- LoRA -----------------------------------------------------------------------------------------------------------
def _peft():
    try:
        import peft  # noqa: F401  (~5 s to import: only when LoRA is on, STACK-NOTES 10)
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise HardwareError("lora.r > 0 needs the peft package (pip install peft)") from e
    return peft


def apply_lora(model: nn.Module, cfg, causal_lm: bool) -> nn.Module:
    """Wrap a Hugging Face model with LoRA adapters (``cfg``: a LoRAConfig with r > 0); base weights frozen."""
    peft = _peft()
    from transformers.pytorch_utils import Conv1D

    # GPT-2's projections are Conv1D (weights stored transposed): peft needs fan_in_fan_out for them.
    kwargs = dict(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                  target_modules=list(cfg.target_modules) or default_lora_targets(model),
                  fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()))
    if causal_lm:
        kwargs["task_type"] = peft.TaskType.CAUSAL_LM
    try:
        return peft.get_peft_model(model, peft.LoraConfig(**kwargs))
    except ValueError as e:
        raise HardwareError(f"lora.target_modules: {e}") from None


def default_lora_targets(model: nn.Module):
    """No target_modules given: peft's default for the architecture where peft has one (GPT-2 ``c_attn``, Llama's
    q/v projections, ...), else every linear layer but the output head (peft's "all-linear", the QLoRA recipe TRL's
    docs use), so architectures peft has no entry for (Phi-3's fused ``qkv_proj``, ...) still get adapters."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return None if model_type in defaults else "all-linear"


def is_lora(module: nn.Module) -> bool:
    return hasattr(module, "disable_adapter") and hasattr(module, "merge_and_unload")


def merge_lora(module: nn.Module, adapter_dir: str | Path | None = None) -> nn.Module:
    """Save the adapter alone to ``adapter_dir`` (when given), then merge it into the base weights and return the
    plain Hugging Face model. A module without LoRA is returned as it is."""
    if not is_lora(module):
        return module
    if adapter_dir is not None:
        module.save_pretrained(str(adapter_dir))
    merged = module.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


class AdapterDisabled(nn.Module):
    """The frozen reference policy of LoRA PPO: the policy's own base weights, its adapter switched off for the
    forward. The policy is held outside the module tree, so freezing this module's parameters (there are none)
    never freezes the policy."""

    def __init__(self, lora_model: nn.Module):
        super().__init__()
        object.__setattr__(self, "_lora_model", lora_model)

    def forward(self, *args, **kwargs):
        with self._lora_model.disable_adapter():
            return self._lora_model(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        return self._lora_model.get_base_model()


# -- one call per stage ---------------------------------------------------------------------------------------------
def prepare(module: nn.Module, device: torch.device, compute, trainable: bool = True,
            hf: nn.Module | None = None) -> nn.Module:
    """Move ``module`` (all of it: heads and buffers too) to ``device`` and apply the precision and (for a trained
    model) checkpointing switches of ``compute`` (a ComputeConfig) to ``hf``, the Hugging Face model inside it
    (``PolicyWithValueHead.lm``, ``RewardModel.trunk``; default: the module itself). Returns ``module``."""
    module.to(device)
    dtype = getattr(compute, "dtype", "fp32")
    if dtype in ("bf16", "fp16"):      # heads and models loaded without a dtype (reward model, critic) follow it
        module.to({"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
    target = module if hf is None else hf
    if trainable and compute.gradient_checkpointing:
        enable_gradient_checkpointing(target)
    autocast_forward(target, device, compute.precision)
    return module
