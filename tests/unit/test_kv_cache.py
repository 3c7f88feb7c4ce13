"""rlhf/kv_cache.py: a reserved layer holds exactly what transformers' growing DynamicLayer holds, through growth
past its first buffer and row drops; only caches of plain per-row layers are swapped or dropped from."""
import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer, StaticCache

from rlhf import kv_cache
from rlhf.kv_cache import ReservedLayer


def kv(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 3, generator=g)   # values: another width


def test_a_reserved_layer_holds_what_concatenation_holds_through_growth_and_drops():
    plain, reserved = DynamicLayer(), None
    k, v = kv(6, 5, 0)
    plain.update(k, v)
    reserved = ReservedLayer(k, v, room=80)
    assert reserved._k.size(-2) == 5 + 32                          # a first reserve, not the whole room
    for step in range(70):                                         # past the first buffer: it doubles
        if step == 40:
            rows = torch.tensor([0, 2, 5])
            plain.batch_select_indices(rows)
            reserved.batch_select_indices(rows)
        k, v = kv(plain.keys.size(0), 1, step + 1)
        pk, pv = plain.update(k, v)
        rk, rv = reserved.update(k, v)
        assert torch.equal(pk, rk) and torch.equal(pv, rv)
        assert reserved.get_seq_length() == plain.get_seq_length()
    assert reserved._k.size(-2) <= 5 + 80                          # never past prompt + room
    reserved.crop(-3)
    assert reserved.get_seq_length() == plain.get_seq_length() - 3


def test_growth_past_the_room_still_holds_every_position():
    k, v = kv(2, 4, 0)
    layer, full = ReservedLayer(k, v, room=2), [k]
    for step in range(5):
        k, v = kv(2, 1, step + 1)
        full.append(k)
        layer.update(k, v)
    assert torch.equal(layer.keys, torch.cat(full, -2))


def test_only_caches_of_per_row_layers_are_reserved_and_droppable():
    cache = DynamicCache()
    k, v = kv(3, 4, 0)
    cache.update(k, v, 0)
    cache.update(k, v, 1)
    cache.layers[1] = DynamicSlidingWindowLayer(sliding_window=8)
    cache.layers[1].update(k, v)
    kv_cache.reserve(cache, 10)
    assert [type(layer) for layer in cache.layers] == [ReservedLayer, DynamicSlidingWindowLayer]
    assert kv_cache.droppable(cache)
    kv_cache.drop_rows(cache, torch.tensor([1]))
    assert [layer.keys.size(0) for layer in cache.layers] == [1, 1]
    assert torch.equal(cache.layers[0].keys, k[1:2])
    assert not kv_cache.droppable(None) and not kv_cache.droppable(((k, v),))


@pytest.mark.parametrize("room", [0, 5])
def test_a_static_cache_is_left_as_it_is(room):
    from transformers import LlamaConfig
    cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    cache = StaticCache(config=cfg, max_cache_len=8)
    before = [type(layer) for layer in cache.layers]
    kv_cache.reserve(cache, room)
    assert [type(layer) for layer in cache.layers] == before and not kv_cache.droppable(cache)
