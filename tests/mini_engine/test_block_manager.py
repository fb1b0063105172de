"""BlockManager on fake sequences (no torch): allocation, ref counts, prefix caching, eviction."""

import pytest

from mini_engine.engine.block_manager import BlockManager
from mini_engine.engine.sequence import Sequence
from mini_engine.sampling_params import SamplingParams


def seq(tokens, rid="r"):
    return Sequence(rid, list(tokens), SamplingParams())


def test_allocate_and_free_returns_every_block():
    bm = BlockManager(8, 4)
    s = seq(range(10))
    assert bm.num_blocks_to_allocate(s, 10) == 3
    bm.allocate(s, 10)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    bm.allocate(s, 13)  # grows by one block
    assert len(s.block_table) == 4
    bm.free_seq(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_can_allocate_refuses_when_full():
    bm = BlockManager(2, 4)
    s = seq(range(9))
    assert not bm.can_allocate(s, 9)
    assert bm.can_allocate(s, 8)


def test_prefix_cache_hit_after_compute_and_free():
    bm = BlockManager(16, 4)
    a = seq(range(11), "a")
    bm.allocate(a, 11)
    a.num_computed_tokens = 11
    bm.cache_blocks(a)  # two full blocks registered
    b = seq(list(range(8)) + [99, 98, 97], "b")
    hits = bm.get_computed_blocks(b)
    assert hits == a.block_table[:2]
    bm.allocate(b, 11, hits)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert bm.ref_count[a.block_table[0]] == 2
    bm.free_seq(a)
    bm.free_seq(b)
    assert bm.num_free_blocks == 16
    c = seq(list(range(8)) + [5], "c")  # the prefix survives its owners (cached free blocks)
    assert len(bm.get_computed_blocks(c)) == 2


def test_hit_never_covers_the_last_token():
    bm = BlockManager(16, 4)
    a = seq(range(8), "a")
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.cache_blocks(a)
    same = seq(range(8), "b")
    assert len(bm.get_computed_blocks(same)) == 1  # block 2 holds the last token: recomputed


def test_uncomputed_blocks_are_not_shared():
    bm = BlockManager(16, 4)
    a = seq(range(8), "a")
    bm.allocate(a, 8)  # allocated but not computed yet
    assert bm.get_computed_blocks(seq(range(9), "b")) == []


def test_reusing_a_cached_free_block_evicts_its_entry():
    bm = BlockManager(2, 4)
    a = seq(range(5), "a")
    bm.allocate(a, 5)
    a.num_computed_tokens = 5
    bm.cache_blocks(a)
    bm.free_seq(a)
    b = seq(range(100, 108), "b")
    bm.allocate(b, 8)  # takes both blocks, including a's cached one
    assert bm.get_computed_blocks(seq(range(5), "c")) == []
    bm.free_seq(b)
    assert bm.num_free_blocks == 2


def test_reviving_cached_blocks_counts_against_free_list():
    bm = BlockManager(3, 4)
    a = seq(range(9), "a")
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.cache_blocks(a)
    bm.free_seq(a)
    b = seq(range(9), "b")
    hits = bm.get_computed_blocks(b)
    assert len(hits) == 2
    assert bm.num_blocks_to_allocate(b, 9, hits) == 3  # 2 revived + 1 new
    bm.allocate(b, 9, hits)
    assert bm.num_free_blocks == 0
    with pytest.raises(AssertionError):
        bm.allocate(seq(range(4), "c"), 4)
