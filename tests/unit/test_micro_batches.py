"""rlhf/distributed.py micro_batches: every rank makes as many forward/backward calls as the others (FSDP
all-gathers in each forward), a short batch padded with zero-weight repeats; one process unchanged."""
from __future__ import annotations

import pytest

from rlhf.distributed import SINGLE, DistContext, micro_batches, shard


def ranks(world: int) -> list[DistContext]:
    return [DistContext(world, r, r) for r in range(world)]


def test_one_process_is_the_plain_runs_of_micro():
    assert micro_batches(list(range(7)), 3, SINGLE) == [([0, 1, 2], True), ([3, 4, 5], True), ([6], True)]


@pytest.mark.parametrize("n,world,micro", [(8, 2, 2), (5, 2, 2), (1, 2, 1), (3, 4, 1), (9, 3, 2), (7, 2, 4)])
def test_every_rank_gets_as_many_runs_and_the_counted_rows_are_the_batch(n, world, micro):
    idx = list(range(100, 100 + n))
    runs = {ctx.rank: micro_batches(idx, micro, ctx) for ctx in ranks(world)}
    assert len({len(r) for r in runs.values()}) == 1                    # the same number of calls on every rank
    counted = sorted(i for r in runs.values() for part, counts in r if counts for i in part)
    assert counted == idx                                                # each row counted once, none invented
    for ctx in ranks(world):
        assert [i for part, counts in runs[ctx.rank] if counts for i in part] == shard(idx, ctx)
        assert all(part and set(part) <= set(idx) for part, _ in runs[ctx.rank])   # fillers are rows of the batch


def test_an_even_share_has_no_filler():
    assert all(counts for ctx in ranks(2) for _, counts in micro_batches(list(range(8)), 2, ctx))
