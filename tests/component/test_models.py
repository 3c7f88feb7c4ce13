import torch

from rlhf.config import TrainConfig
from rlhf.data import pad_left
from rlhf.modeling import PolicyWithValueHead, RewardModel
from rlhf.train_reward import encode_groups, pairwise_accuracy, train_reward_model
from rlhf.train_lm import evaluate_nll, sft_examples, train_causal_lm


def test_sft_examples_learn_only_response_and_eos(tok):
    (ex,) = sft_examples(tok, [{"prompt": "the film was", "completion": "great."}], 64)
    n_prompt = len(tok("the film was", add_special_tokens=False)["input_ids"])
    assert ex.mask[:n_prompt] == [0] * n_prompt
    assert all(m == 1 for m in ex.mask[n_prompt:])
    assert ex.ids[-1] == tok.eos_token_id and tok.pad_token_id != tok.eos_token_id


def test_sft_training_lowers_loss(tok, tiny_lm):
    rows = [{"prompt": "the film was", "completion": "great and the music felt warm."}] * 32
    ex = sft_examples(tok, rows, 64)
    before = evaluate_nll(tiny_lm, ex, tok.pad_token_id)
    train_causal_lm(tiny_lm, ex, TrainConfig(epochs=4, batch_size=8, lr=3e-3), tok.pad_token_id)
    assert evaluate_nll(tiny_lm, ex, tok.pad_token_id) < before - 0.5


def test_reward_score_ignores_left_padding(tok, tiny_lm):
    rm = RewardModel(tiny_lm.transformer).eval()
    seq = tok("the film was great.", add_special_tokens=False)["input_ids"]
    ids1, m1 = pad_left([seq], tok.pad_token_id)
    ids2, m2 = pad_left([seq, seq + seq], tok.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(rm(ids1, m1)[0], rm(ids2, m2)[0], atol=1e-5)


def test_value_head_shape_and_padding_invariance(tok, tiny_lm):
    policy = PolicyWithValueHead(tiny_lm).eval()
    seq = tok("the plot was dull.", add_special_tokens=False)["input_ids"]
    ids, m = pad_left([seq, [1] * 3 + seq[:2]], tok.pad_token_id)
    ids_b, m_b = pad_left([seq], tok.pad_token_id)
    with torch.no_grad():
        logits, values = policy(ids, m)
        _, values_b = policy(ids_b, m_b)
    assert logits.shape[:2] == values.shape == ids.shape
    assert torch.allclose(values[0, -len(seq):], values_b[0], atol=1e-5)


def test_pairwise_reward_training_learns_a_preference(tok, tiny_lm):
    rows = [{"prompt": "the film was", "responses": [f"{good} and the music felt {x}.", f"{bad} and the music felt {x}."],
             "ranks": [0, 1]} for good, bad in (("great", "bad"), ("superb", "dull")) for x in ("long", "short", "warm")]
    groups = encode_groups(tok, rows * 8, 64)
    rm = RewardModel(tiny_lm.transformer)
    train_reward_model(rm, groups, TrainConfig(epochs=3, batch_size=8, lr=3e-3), tok.pad_token_id)
    assert pairwise_accuracy(rm, groups, tok.pad_token_id) == 1.0


def test_truncated_responses_get_no_eos_from_merged_rankings(tok):
    """Ingest keeps each Label Studio candidate's `ended` under meta.annotations[].meta.candidates: a response
    cut at the length limit must reach the reward model without an EOS it never had."""
    from rlhf.train_reward import response_ended
    row = {"prompt": "the film was", "responses": ["great.", "bad and the"], "ranks": [0, 1],
           "meta": {"annotations": [{"meta": {"candidates": [{"id": "r0", "ended": True},
                                                             {"id": "r1", "ended": False}]}}]}}
    assert response_ended(row) == [True, False]
    (g,) = encode_groups(tok, [row], 64)
    assert g.seqs[0][-1] == tok.eos_token_id and g.seqs[1][-1] != tok.eos_token_id
    assert response_ended({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}) == [True, True]
    assert response_ended({**row, "meta": {"ended": [False, True]}}) == [False, True]
