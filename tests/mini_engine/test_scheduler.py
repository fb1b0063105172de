"""Scheduler on fake sequences (no torch): continuous batching, chunked prefill, preemption."""

import subprocess
import sys

from mini_engine.engine.block_manager import BlockManager
from mini_engine.engine.scheduler import Scheduler
from mini_engine.engine.sequence import Sequence, SequenceStatus
from mini_engine.sampling_params import SamplingParams


def make(num_blocks=64, block_size=4, max_seqs=4, budget=16, max_len=256, caching=True):
    bm = BlockManager(num_blocks, block_size, caching)
    return Scheduler(bm, max_seqs, budget, max_len, watermark=0.0), bm


def seq(rid, n, max_tokens=4):
    return Sequence(rid, list(range(1, n + 1)), SamplingParams(temperature=0, max_tokens=max_tokens))


def run_step(sched, token=7):
    """One step with a fake model: every sequence that reaches its end samples `token`."""
    batch = sched.schedule()
    sampled = [token if batch.samples(i) else None for i in range(len(batch.seqs))]
    sched.update(batch, sampled)
    done = [s for s in batch.seqs if s.finish_reason is not None]
    sched.finish(done)
    return batch, done


def test_modules_do_not_import_torch():
    code = ("import sys; import mini_engine.engine.scheduler, mini_engine.engine.block_manager; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_chunked_prefill_then_decode_with_budget():
    sched, bm = make(budget=8)
    a = seq("a", 20)
    sched.add(a)
    batch, _ = run_step(sched)
    assert batch.num_new_tokens == [8] and not batch.samples(0)
    run_step(sched)
    batch, _ = run_step(sched)
    assert batch.num_new_tokens == [4] and len(a.token_ids) == 21  # prompt done -> first token
    batch, _ = run_step(sched)
    assert batch.num_new_tokens == [1] and batch.is_decode_only


def test_decodes_come_first_and_share_the_step_with_prefill():
    sched, _ = make(budget=10)
    sched.add(seq("a", 3, max_tokens=10))
    run_step(sched)
    sched.add(seq("b", 30))
    batch, _ = run_step(sched)
    assert [s.request_id for s in batch.seqs] == ["a", "b"]
    assert batch.num_decodes == 1 and batch.num_new_tokens == [1, 9]


def test_max_num_seqs_limits_running():
    sched, _ = make(max_seqs=2)
    for i in range(3):
        sched.add(seq(f"r{i}", 3))
    batch, _ = run_step(sched)
    assert len(batch.seqs) == 2 and len(sched.waiting) == 1


def test_preemption_recomputes_and_resumes():
    # 6 blocks of 4 tokens: two sequences of 8 prompt tokens grow until one must be preempted
    sched, bm = make(num_blocks=6, budget=32)
    a, b = seq("a", 8, max_tokens=12), seq("b", 8, max_tokens=12)
    sched.add(a)
    sched.add(b)
    preempted = False
    for _ in range(60):
        if not sched.has_unfinished():
            break
        batch, _ = run_step(sched)
        if batch.preempted:
            preempted = True
            victim = batch.preempted[0]
            assert victim is b and victim.num_computed_tokens == 0 and victim.block_table == []
            assert sched.waiting[0] is victim and victim.status is SequenceStatus.WAITING
    assert preempted
    assert a.num_output_tokens == 12 and b.num_output_tokens == 12
    assert bm.num_free_blocks == 6


def test_every_block_free_after_finished_aborted_and_preempted_mix():
    # 9 blocks of 4 = one full-length (36) sequence, shared by 6: preemption is certain
    sched, bm = make(num_blocks=9, budget=24, max_seqs=6, max_len=36)
    seqs = [seq(f"r{i}", 5 + 3 * i, max_tokens=6 + 3 * i) for i in range(6)]
    for s in seqs:
        sched.add(s)
    steps = 0
    while sched.has_unfinished() and steps < 200:
        run_step(sched)
        steps += 1
        if steps == 3:
            sched.abort(seqs[1])  # running
        if steps == 4:
            sched.abort(seqs[5])  # waiting or running, either way freed
    assert not sched.has_unfinished()
    assert sched.num_preemptions > 0, "the mix should include preempted sequences"
    assert bm.num_free_blocks == bm.num_blocks
    assert all(c == 0 for c in bm.ref_count)
    assert seqs[1].finish_reason == "abort"
    for s in seqs:
        if s.finish_reason == "length":
            assert s.num_output_tokens == s.params.max_tokens or len(s.token_ids) == 36


def test_prefix_cache_skips_shared_prompt_blocks():
    sched, bm = make(budget=64)
    a = seq("a", 17)
    sched.add(a)
    run_step(sched)
    b = seq("b", 17)
    sched.add(b)
    batch, _ = run_step(sched)
    i = [s.request_id for s in batch.seqs].index("b")
    assert batch.num_new_tokens[i] == 1  # 16 cached tokens, the last one recomputed
    assert sched.num_cached_prompt_tokens == 16


def test_length_stop_at_max_model_len():
    sched, _ = make(max_len=10)
    s = seq("a", 8, max_tokens=100)
    sched.add(s)
    while sched.has_unfinished():
        run_step(sched)
    assert len(s.token_ids) == 10 and s.finish_reason == "length"
