import math

import pytest
import torch

from rlhf.logprobs import entropy_from_logits, logprobs_from_logits, response_logprobs, shift_for_response


def test_logprobs_by_hand():
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)]]])  # probs 1/4, 1/4, 1/2
    out = logprobs_from_logits(logits, torch.tensor([[2]]))
    assert out.shape == (1, 1) and out.item() == pytest.approx(math.log(0.5))


def test_logprobs_match_naive_log_softmax_gather():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 4), generator=gen)
    naive = torch.gather(logits.log_softmax(-1), -1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T, 1) -> (B, T)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), naive)
    bf16 = logprobs_from_logits(logits.bfloat16(), labels)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16.double(), naive, atol=0.05, rtol=0)


def test_entropy_by_hand():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    h = entropy_from_logits(torch.tensor([[0.0, -1e4]]))  # near-deterministic
    assert h.shape == (1,) and h.item() == pytest.approx(0.0, abs=1e-6)


def test_shift_for_response_alignment():
    # B=1, T=5, prompt of 3 tokens (context_length 3), response of 2 tokens
    input_ids = torch.tensor([[7, 8, 9, 1, 2]])
    logits = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1).expand(1, 5, 3)  # (B, T, V); logit value = position
    resp_logits, labels = shift_for_response(logits, input_ids, context_length=3)
    assert labels.tolist() == [[1, 2]]
    assert resp_logits[0, :, 0].tolist() == [2.0, 3.0]  # positions 2 and 3 predict tokens at 3 and 4


def test_temperature_applied_before_log_softmax():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 5, generator=gen)
    input_ids = torch.randint(0, 5, (2, 6), generator=gen)
    original = logits.clone()
    out = response_logprobs(logits, input_ids, context_length=2, temperature=0.7)
    expected = torch.gather((logits[:, 1:-1] / 0.7).log_softmax(-1), -1, input_ids[:, 2:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, expected)
    assert torch.equal(logits, original)  # not in place
    with pytest.raises(ValueError):
        shift_for_response(logits, input_ids, 2, temperature=0.0)


def test_padding_invariance_of_logits():
    # Changing logits at positions that do not predict a given token leaves that token's logprob unchanged.
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 5, generator=gen)
    input_ids = torch.randint(0, 5, (2, 6), generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()  # response mask (B, R), R = 4
    base = response_logprobs(logits, input_ids, context_length=2)
    dirty = logits.clone()
    dirty[0, 4:] = 1e3  # positions 4, 5 predict response idx 3 (padded) and nothing
    dirty[1, 2:] = -1e3  # positions 2.. predict response idx 1.. (padded)
    out = response_logprobs(dirty, input_ids, context_length=2)
    torch.testing.assert_close(out[mask], base[mask])
