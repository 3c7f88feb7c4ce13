import pytest
import torch

from rlhf import generation, kv_cache
from rlhf.generation import decode_responses, encode_prompts, logprobs_of, sample
from rlhf.modeling import load_causal_lm, load_tokenizer
from tests.component.conftest import TEXTS


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


def _ends_at_different_steps(tok):
    """A tenth of the vocabulary ends a response: rows end after 1 to ~20 tokens."""
    return list(range(len(tok)))[::10]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ended_rows_leave_the_batch_and_no_token_changes(tok, tiny_lm, tmp_path, monkeypatch, arch):
    """Dropping ended rows from the decode batch and its cache (rlhf/kv_cache.py) draws the same tokens, with the
    same recorded log-probs, entropies and hidden states, as running every row to the end; after a row's end they
    are 0."""
    if arch == "llama":
        from tests.component.test_hf_models import save_tiny_llama
        save_tiny_llama(tok, tmp_path / "llama")
        model = load_causal_lm(tmp_path / "llama", load_tokenizer(tmp_path / "llama"))
    else:
        model = tiny_lm
    q, qm = encode_prompts(tok, [t[:8 + i] for i, t in enumerate(TEXTS[:24])], 16)
    stop = _ends_at_different_steps(tok)
    drops = []
    monkeypatch.setattr(kv_cache, "drop_rows", lambda cache, keep, f=kv_cache.drop_rows: (drops.append(len(keep)),
                                                                                            f(cache, keep)))

    def run():
        return sample(model, q, qm, 24, 1.0, stop, tok.pad_token_id, torch.Generator().manual_seed(5),
                      record=True, hidden=True)

    dropped = run()
    assert drops, "no row was dropped: the test's responses must end at different steps"
    monkeypatch.setattr(generation, "DROP_FINISHED_AT", 2.0)        # never drop
    drops.clear()
    full = run()
    assert not drops
    assert torch.equal(dropped.response_ids, full.response_ids)
    assert torch.equal(dropped.response_mask, full.response_mask) and torch.equal(dropped.ended, full.ended)
    lengths = full.response_mask.sum(1)
    assert len(set(lengths.tolist())) > 3
    m = full.response_mask.bool()
    for got, want in ((dropped.logprobs, full.logprobs), (dropped.entropy, full.entropy),
                      (dropped.hidden, full.hidden)):
        assert torch.allclose(got[m], want[m], atol=1e-5)
        assert not got[~m].any()
