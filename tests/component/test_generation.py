import torch

from rlhf.generation import decode_responses, encode_prompts, logprobs_of, sample


def test_batched_logprobs_equal_naive_token_by_token(tok, tiny_lm):
    """The one-forward log-probs over left-padded prompt+response equal an unpadded token-by-token forward."""
    q, qm = encode_prompts(tok, ["the film", "the plot was great and the"], 16)
    r = sample(tiny_lm, q, qm, 8, 0.7, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
    batched = logprobs_of(tiny_lm, r, 0.7)
    ids, attn = r.full()
    for row in range(ids.size(0)):
        real = ids[row][attn[row].bool()]
        p_len = int(qm[row].sum())
        for t in range(int(r.response_mask[row].sum())):
            logits = tiny_lm(input_ids=real[None, :p_len + t]).logits[0, -1] / 0.7
            naive = torch.log_softmax(logits, -1)[real[p_len + t]]
            assert torch.allclose(batched[row, t], naive, atol=1e-5)


def test_sampling_stops_at_eos_and_pads_after(tok, tiny_lm):
    # Make EOS overwhelmingly likely so every row ends at once.
    with torch.no_grad():
        tiny_lm.lm_head.weight[tok.eos_token_id] += 50 * tiny_lm.transformer.wte.weight.mean(0)
        tiny_lm.transformer.ln_f.bias.copy_(tiny_lm.transformer.wte.weight[tok.eos_token_id].sign())
    q, qm = encode_prompts(tok, ["the film", "the cast"], 16)
    r = sample(tiny_lm, q, qm, 12, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
    for row in range(2):
        m = r.response_mask[row]
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        if r.ended[row]:
            assert r.response_ids[row, n - 1] == tok.eos_token_id
            assert (r.response_ids[row, n:] == tok.pad_token_id).all()
    assert isinstance(decode_responses(tok, r)[0], str)


def test_sampling_is_reproducible_with_a_seeded_generator(tok, tiny_lm):
    q, qm = encode_prompts(tok, ["the film"] * 4, 16)
    a = sample(tiny_lm, q, qm, 8, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(3))
    b = sample(tiny_lm, q, qm, 8, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(3))
    assert torch.equal(a.response_ids, b.response_ids)
