"""BlockManager: which KV-cache blocks each sequence owns, with a free list and prefix caching.

Pure Python (no torch). The KV cache is `num_blocks` blocks of `block_size` token slots; sequence
token i lives in slot block_table[i // block_size] * block_size + i % block_size.

Prefix caching: once a block is full and its K/V are computed, it is registered under a digest of
(its parent's digest, its tokens), so the digest names the whole prefix. A new sequence whose leading
full blocks match reuses them (ref_count += 1) and skips computing them. A block whose ref_count drops
to 0 goes to the tail of the free list but keeps its registration until it is handed out again
(least recently freed first), so a finished or preempted request's prefix stays reusable while
memory allows. Registration happens only after the K/V were written, never at allocation, so no
sequence can ever read a block that is still being computed.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from .sequence import Sequence

__all__ = ["BlockManager"]


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks}: the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.block_digest: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # prefix digest -> block id
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    # ---------------------------------------------------------------- accounting
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---------------------------------------------------------------- prefix cache
    def _digests(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Digests of the first `num_blocks` full blocks of `seq` (computed once, then kept on seq)."""
        bs, hashes, tokens = self.block_size, seq.block_hashes, seq.token_ids
        while len(hashes) < num_blocks:
            i = len(hashes)
            h = hashlib.blake2b(hashes[-1] if hashes else b"", digest_size=16)
            h.update(array("q", tokens[i * bs:(i + 1) * bs]).tobytes())
            hashes.append(h.digest())
        return hashes[:num_blocks]

    def get_computed_blocks(self, seq: Sequence) -> list[int]:
        """Cached blocks matching the leading full blocks of a sequence that holds no blocks yet.

        Stops before the block holding the last token: at least one token must be computed to get
        the logits for the next one. Looks only; nothing is taken until allocate().
        """
        if not self.enable_prefix_caching or seq.block_table:
            return []
        found = []
        for digest in self._digests(seq, (len(seq) - 1) // self.block_size):
            block = self.cached.get(digest)
            if block is None:
                break
            found.append(block)
        return found

    def cache_blocks(self, seq: Sequence) -> None:
        """Registers the sequence's full blocks whose K/V are now all computed."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= seq.num_cached_blocks:
            return
        digests = self._digests(seq, num_full)
        for i in range(seq.num_cached_blocks, num_full):
            block = seq.block_table[i]
            if digests[i] not in self.cached and self.block_digest[block] is None:
                self.cached[digests[i]] = block
                self.block_digest[block] = digests[i]
        seq.num_cached_blocks = num_full

    # ---------------------------------------------------------------- allocation
    def num_blocks_to_allocate(self, seq: Sequence, num_tokens: int,
                               computed_blocks: list[int] | tuple = ()) -> int:
        """Free-list blocks needed so that `seq` can hold `num_tokens` tokens (computed_blocks that sit
        in the free list with ref_count 0 count too: taking them removes them from it)."""
        have = len(seq.block_table) + len(computed_blocks)
        revived = sum(1 for b in computed_blocks if self.ref_count[b] == 0)
        return max(0, self.blocks_for(num_tokens) - have) + revived

    def can_allocate(self, seq: Sequence, num_tokens: int, computed_blocks: list[int] | tuple = ()) -> bool:
        return self.num_blocks_to_allocate(seq, num_tokens, computed_blocks) <= len(self.free)

    def allocate(self, seq: Sequence, num_tokens: int, computed_blocks: list[int] | tuple = ()) -> None:
        """Takes `computed_blocks` (prefix hits, only for a sequence with no blocks) and enough free
        blocks for `num_tokens` tokens. The caller checked can_allocate()."""
        assert self.can_allocate(seq, num_tokens, computed_blocks), "allocate() without can_allocate()"
        for block in computed_blocks:
            if self.ref_count[block] == 0:
                del self.free[block]
            self.ref_count[block] += 1
            seq.block_table.append(block)
        if computed_blocks:  # they are registered already; cache_blocks() continues after them
            seq.num_cached_blocks = len(seq.block_table)
        while len(seq.block_table) * self.block_size < num_tokens:
            block, _ = self.free.popitem(last=False)  # least recently freed
            digest = self.block_digest[block]
            if digest is not None:  # evict its prefix-cache entry: the block gets new contents
                if self.cached.get(digest) == block:
                    del self.cached[digest]
                self.block_digest[block] = None
            self.ref_count[block] = 1
            seq.block_table.append(block)

    def free_seq(self, seq: Sequence) -> None:
        """Releases every block of `seq` (last block first, so a prefix outlives its tail)."""
        for block in reversed(seq.block_table):
            self.ref_count[block] -= 1
            assert self.ref_count[block] >= 0, f"block {block} freed twice"
            if self.ref_count[block] == 0:
                self.free[block] = None
        seq.block_table = []
        seq.num_cached_blocks = 0
