"""The sampler's KV cache: room reserved for the decode steps, and rows dropped when their responses have ended.

transformers' ``DynamicLayer`` grows by ``torch.cat`` at every decode step, which copies the layer's whole cache:
38% of a 64-row decode step of the 26.7M-parameter Llama in BENCHMARKS.md (torch profiler, ``aten::cat``). After the
prefill, ``reserve`` swaps each plain ``DynamicLayer`` for a ``ReservedLayer`` holding the same keys and values in a
buffer with room for more positions: a decode step writes its one position in place and attention reads a view of
the filled part (as a static cache does, but per-row droppable and sized to this call). A 64-row decode step of that
Llama: 46-49 ms instead of 52-70.

``drop_rows`` keeps only some batch rows (``Cache.batch_select_indices``, as transformers' contrastive search
selects rows). Caches whose layers are not plain per-row keys and values (static, quantised, linear-attention,
offloaded, a legacy tuple) are left as they are: correct, only slower.
"""
from __future__ import annotations

import torch

try:
    from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer
except ImportError:                          # transformers without the layered Cache API: nothing is swapped
    Cache = DynamicLayer = DynamicSlidingWindowLayer = None


if DynamicLayer is not None:
    class ReservedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values (b, h, L, d) are views of buffers (b, h, capacity, d). The first
        buffer has room for ``min(room, max(32, L // 2))`` more positions and doubles when full, never past
        L + ``room`` (``room``: the most positions still to come), so a 2048-token limit on responses that end
        after 200 does not hold a 2048-position cache; the copies over a whole response stay O(length), where
        growing by concatenation copies O(length^2)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
            super().__init__()
            self.device, self.is_initialized = keys.device, True
            n = keys.size(-2)
            self._limit = n + room
            first = n + min(room, max(32, n // 2))
            self._k, self._v = self._buffer(keys, first), self._buffer(values, first)
            self._set_length(n)

        @staticmethod
        def _buffer(x: torch.Tensor, capacity: int) -> torch.Tensor:
            buf = x.new_empty(*x.shape[:-2], capacity, x.size(-1))
            buf[..., :x.size(-2), :] = x
            return buf

        def _set_length(self, n: int) -> None:
            self._len = n
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            n, capacity = key_states.size(-2), self._k.size(-2)
            if self._len + n > capacity:
                grown = max(self._len + n, min(2 * capacity, self._limit))
                self._k, self._v = self._buffer(self.keys, grown), self._buffer(self.values, grown)
            self._k[..., self._len:self._len + n, :] = key_states
            self._v[..., self._len:self._len + n, :] = value_states
            self._set_length(self._len + n)
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            capacity = self._k.size(-2)
            self._k = self._buffer(self.keys[indices], capacity)
            self._v = self._buffer(self.values[indices], capacity)
            self._set_length(self._len)

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove < 0:
                self._set_length(max(self._len + tokens_to_remove, 0))
            else:
                super().crop(tokens_to_remove)                      # raises, as DynamicLayer's does

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx)


def _plain(layer) -> bool:
    return DynamicLayer is not None and type(layer) is DynamicLayer and layer.is_initialized \
        and layer.keys is not None and layer.keys.dim() == 4


def reserve(cache, room: int) -> None:
    """Give each plain ``DynamicLayer`` of ``cache`` room for ``room`` more positions (in place)."""
    if Cache is None or not isinstance(cache, Cache) or room <= 0 or getattr(cache, "offloading", False):
        return
    for i, layer in enumerate(cache.layers):
        if _plain(layer):
            cache.layers[i] = ReservedLayer(layer.keys, layer.values, room)


def droppable(cache) -> bool:
    """Whether rows can be dropped from ``cache``: every layer holds keys and values per row (``DynamicLayer``, its
    sliding-window subclass or a ``ReservedLayer``)."""
    if Cache is None or not isinstance(cache, Cache) or not getattr(cache, "layers", None):
        return False
    kinds = (DynamicLayer, DynamicSlidingWindowLayer, ReservedLayer)
    return all(type(layer) in kinds for layer in cache.layers)


def drop_rows(cache, keep: torch.Tensor) -> None:
    """Keep only the batch rows ``keep`` (b',) of a ``droppable`` cache (in place)."""
    cache.batch_select_indices(keep)
