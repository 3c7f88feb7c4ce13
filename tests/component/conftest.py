import pytest
import torch

from rlhf.config import ModelConfig, TokenizerConfig
from rlhf.modeling import build_gpt2, train_tokenizer

TEXTS = [f"the {a} was {b} and the {c} felt {d}." for a in ("film", "plot", "cast", "score")
         for b in ("great", "bad", "dull", "superb") for c in ("ending", "music") for d in ("long", "short", "warm")]


@pytest.fixture(scope="session")
def tok():
    return train_tokenizer(TEXTS * 3, TokenizerConfig(vocab_size=300, min_frequency=1))


@pytest.fixture
def tiny_lm(tok):
    torch.manual_seed(0)
    return build_gpt2(ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64), tok, seed=0)
