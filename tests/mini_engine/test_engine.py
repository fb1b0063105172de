"""LLMEngine / LLM on the tiny preset (CPU, fp32): outputs vs transformers, preemption, sampling,
stop strings, aborts, input validation, KV accounting."""

import pytest
import torch

from mini_engine import LLM, SamplingParams
from mini_engine.check import reference_weights
from mini_engine.make_checkpoint import hf_llama

PROMPTS = ["The quick brown fox", "def main():", "Once upon a time there was", "1 2 3"]


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    return LLM(str(tiny_dirs["bf16"]), max_num_seqs=4, max_num_batched_tokens=16, max_model_len=128)


def hf_greedy(path, prompt_ids, n):
    cfg, sd, _ = reference_weights(path, quantize=False)
    model = hf_llama(cfg, sd, torch.device("cpu"), torch.float32)
    out = []
    for ids in prompt_ids:
        ids = list(ids)
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        out.append(ids[-n:])
    return out


def test_greedy_matches_transformers(llm, tiny_dirs):
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    outs = llm.generate(PROMPTS, params)
    ref = hf_greedy(tiny_dirs["bf16"], [o.prompt_token_ids for o in outs], 10)
    assert [o.outputs[0].token_ids for o in outs] == ref
    text = llm.tokenizer.decode(outs[0].outputs[0].token_ids, skip_special_tokens=True)
    assert outs[0].outputs[0].text == text  # incremental detokenization == full decode


def test_preemption_resumes_with_identical_output(tiny_dirs):
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
              SamplingParams(temperature=0.8, top_k=50, seed=7, max_tokens=40, ignore_eos=True)] * 3
    prompts = [{"prompt_token_ids": [0] + list(range(5 + i, 25 + i))} for i in range(6)]
    roomy = LLM(str(tiny_dirs["bf16"]), max_num_seqs=6, max_model_len=64, kv_cache_blocks=64)
    tight = LLM(str(tiny_dirs["bf16"]), max_num_seqs=6, max_model_len=64, kv_cache_blocks=8,
                enable_prefix_caching=False)
    a = roomy.generate(prompts, params)
    b = tight.generate(prompts, params)
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]
    assert tight.engine.block_manager.num_free_blocks == 8


def test_seeded_sampling_is_reproducible_and_batch_independent(llm):
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=123, max_tokens=12, ignore_eos=True)
    alone = llm.generate("Hello there", p)[0].outputs[0].token_ids
    batched = llm.generate(["Hello there", "other prompt", "Hello there"],
                           [p, SamplingParams(temperature=1.0, max_tokens=12), p])
    assert batched[0].outputs[0].token_ids == alone == batched[2].outputs[0].token_ids


def test_stop_string_and_stop_token(llm):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    full = llm.generate("The quick brown fox", greedy)[0].outputs[0]
    assert len(full.text) > 3
    stop = full.text[2:4]
    cut = llm.generate("The quick brown fox", SamplingParams(
        temperature=0, max_tokens=12, ignore_eos=True, stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]
    tok = full.token_ids[3]
    by_id = llm.generate("The quick brown fox", SamplingParams(
        temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[tok]))[0].outputs[0]
    assert by_id.finish_reason == "stop"
    assert by_id.token_ids == full.token_ids[: full.token_ids.index(tok) + 1]


def test_streaming_deltas_add_up_and_abort_frees_blocks(llm):
    eng = llm.engine
    ids = llm.tokenizer("stream me").input_ids
    eng.add_request("s1", ids, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    eng.add_request("s2", ids, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    text, final = "", None
    while final is None:
        for out in eng.step():
            if out.request_id == "s1":
                text += out.new_text
                final = out if out.finished else None
    assert text == final.text and final.finish_reason == "length" and len(final.token_ids) == 8
    assert eng.stats()["kv_blocks_used"] > 0  # s2 still running
    eng.abort_request("s2")
    eng.abort_request("unknown")  # no-op
    assert not eng.has_unfinished_requests()
    assert eng.stats()["kv_blocks_used"] == 0


@pytest.mark.parametrize("rid, ids, params, field", [
    ("", [1, 2], SamplingParams(), "request_id"),
    ("a", [], SamplingParams(), "prompt_token_ids"),
    ("a", [1, 10**9], SamplingParams(), "prompt_token_ids"),
    ("a", list(range(1, 200)), SamplingParams(), "prompt_token_ids"),
    ("a", [1, 2], {"temperature": 0}, "params"),
])
def test_bad_requests_raise_naming_the_field(llm, rid, ids, params, field):
    with pytest.raises(ValueError, match=field):
        llm.engine.add_request(rid, ids, params)
    assert not llm.engine.has_unfinished_requests()


def test_duplicate_request_id(llm):
    eng = llm.engine
    eng.add_request("dup", [1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="request_id"):
        eng.add_request("dup", [1, 2, 3], SamplingParams(max_tokens=2))
    eng.abort_request("dup")
    assert eng.stats()["kv_blocks_used"] == 0 and not eng.has_unfinished_requests()


def test_llm_rejects_unknown_option_and_bad_prompt(tiny_dirs, llm):
    with pytest.raises(ValueError, match="max_num_sequences"):
        LLM(str(tiny_dirs["bf16"]), max_num_sequences=3)
    with pytest.raises(ValueError, match="prompts"):
        llm.generate([123])
    with pytest.raises(ValueError, match="prompt_token_ids"):  # the good sibling is not left queued
        llm.generate(["ok", {"prompt_token_ids": []}])
    assert not llm.engine.has_unfinished_requests()


def test_nvfp4_checkpoint_generates_like_its_dequantized_reference(tiny_dirs):
    llm = LLM(str(tiny_dirs["nvfp4"]), max_model_len=128)
    outs = llm.generate(PROMPTS[:2], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 6 for o in outs)
    s = llm.engine.stats()
    assert s["kv_blocks_used"] == 0 and any(r["backend"] == "reference" for r in s["kernels"])


def test_dummy_preset_runs_without_a_checkpoint():
    llm = LLM("tiny", load_format="dummy", quantization="nvfp4", max_model_len=64)
    out = llm.generate({"prompt_token_ids": [0, 1, 2]}, SamplingParams(temperature=0, max_tokens=3))
    assert len(out[0].outputs[0].token_ids) == 3


def test_failing_step_leaves_no_request_or_block_behind(llm, monkeypatch):
    eng = llm.engine
    free_before = eng.block_manager.num_free_blocks
    real_step, calls = eng.step, []

    def step():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected step failure")
        return real_step()

    monkeypatch.setattr(eng, "step", step)
    with pytest.raises(RuntimeError, match="injected"):
        llm.generate(["one", "two"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert eng.seqs == {} and not eng.has_unfinished_requests()
    assert eng.block_manager.num_free_blocks == free_before
    monkeypatch.setattr(eng, "step", real_step)
    assert llm.generate("again", SamplingParams(temperature=0, max_tokens=2))[0].outputs[0].token_ids
