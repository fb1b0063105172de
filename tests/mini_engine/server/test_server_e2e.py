"""End to end: the real LLMEngine on the built-in default model behind the HTTP server, driven by the
official `openai` client. The server is started once for the module (uvicorn on a loopback thread).

Known values: before the server starts, the same engine generates the test prompts offline (greedy);
the server must return exactly those tokens and text.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import openai
import pytest
from server_helpers import error_of, http_request, metric_value, metrics

from mini_engine.config import EngineConfig
from mini_engine.engine.llm_engine import LLMEngine
from mini_engine.sampling_params import SamplingParams
from mini_engine.serve import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME
from mini_engine.server.api_server import build_app
from mini_engine.server.threaded import ThreadedServer

PROMPTS = ['The "if" statement', "A list comprehension", "Return the"]
N = 12


def _offline(engine: LLMEngine, prompts: list[list[int]], n: int) -> list[tuple[list[int], str]]:
    params = SamplingParams(temperature=0.0, max_tokens=n)
    for i, ids in enumerate(prompts):
        engine.add_request(f"ref-{i}", ids, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = (list(out.token_ids), out.text)
    return [done[f"ref-{i}"] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def served():
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("built-in model not built yet (scripts/train_default_model.py)")
    engine = LLMEngine(EngineConfig(model=str(DEFAULT_MODEL_DIR), device="cpu", max_num_seqs=8,
                                    kv_cache_blocks=256))
    tok = engine.tokenizer
    ids = [tok.encode(p) for p in PROMPTS]
    chat = tok.apply_chat_template([{"role": "user", "content": "What does json.dumps do?"}],
                                   tokenize=False, add_generation_prompt=True)
    chat_ids = tok.encode(chat, add_special_tokens=False)
    refs = _offline(engine, ids + [chat_ids], N)
    app = build_app(engine, model_names=[DEFAULT_MODEL_NAME], max_model_len=engine.max_model_len)
    with ThreadedServer(app) as srv:
        srv.engine, srv.refs, srv.prompt_ids = engine, refs, ids
        yield srv


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0)


def test_completions_match_offline_engine(served, client):
    for prompt, ids, (ref_ids, ref_text) in zip(PROMPTS, served.prompt_ids, served.refs[:3], strict=True):
        r = client.completions.create(model=DEFAULT_MODEL_NAME, prompt=prompt, max_tokens=N,
                                      temperature=0)
        assert r.choices[0].text == ref_text
        assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(ref_ids)
        by_ids = client.completions.create(model=DEFAULT_MODEL_NAME, prompt=ids, max_tokens=N,
                                           temperature=0)
        assert by_ids.choices[0].text == ref_text


def test_stop_string_cuts_the_text(client, served):
    ref_text = served.refs[0][1]
    stop = ref_text[10:14]
    assert len(stop) == 4, ref_text
    for stream in (False, True):
        r = client.completions.create(model=DEFAULT_MODEL_NAME, prompt=PROMPTS[0], max_tokens=N,
                                      temperature=0, stop=[stop], stream=stream)
        chunks = list(r) if stream else [r]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == ref_text[: ref_text.find(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_equals_offline(client, served):
    chunks = list(client.completions.create(model=DEFAULT_MODEL_NAME, prompt=PROMPTS[0],
                                            max_tokens=N, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == served.refs[0][1]
    assert chunks[-1].usage.completion_tokens == len(served.refs[0][0])


def test_chat_with_template(client, served):
    messages = [{"role": "user", "content": "What does json.dumps do?"}]
    r = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=N,
                                       temperature=0)
    assert r.choices[0].message.content == served.refs[-1][1]
    streamed = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages,
                                              max_tokens=N, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == served.refs[-1][1]


def test_errors(served, client):
    too_long = list(range(10, 10 + served.engine.max_model_len))
    for kwargs, param in [(dict(prompt=too_long), "prompt"), (dict(model="gpt-4"), "model"),
                          (dict(temperature=-0.5), "temperature"),
                          (dict(extra_body={"top_k": -7}), "top_k")]:
        args = dict(model=DEFAULT_MODEL_NAME, prompt="x", max_tokens=4) | kwargs
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(**args)
        assert info.value.body["param"] == param and info.value.body["code"] == 400
    status, body = http_request(served.base_url, "POST", "/v1/completions", b'{"prompt": ')
    assert status == 400 and error_of(body)["type"] == "BadRequestError"


def test_concurrent_requests_match_sequential(served):
    prompts = [[20 + i, 300 + 7 * i, 41] for i in range(12)]

    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0)
        rs = await asyncio.gather(*(aclient.completions.create(
            model=DEFAULT_MODEL_NAME, prompt=p, max_tokens=8, temperature=0,
            extra_body={"ignore_eos": True}) for p in prompts))
        await aclient.close()
        return [r.choices[0].text for r in rs]

    together = asyncio.run(run())
    sync = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0)
    one_by_one = [sync.completions.create(model=DEFAULT_MODEL_NAME, prompt=p, max_tokens=8,
                                          temperature=0, extra_body={"ignore_eos": True})
                  .choices[0].text for p in prompts]
    assert together == one_by_one


def test_disconnect_mid_stream_frees_kv(served):
    text = metrics(served.base_url)
    aborts = metric_value(text, "mini_engine:request_client_aborts_total")
    generated = metric_value(text, "mini_engine:generation_tokens_total")
    host, port = served.base_url.removeprefix("http://").split(":")
    max_tokens = served.engine.max_model_len - 8
    body = json.dumps({"model": DEFAULT_MODEL_NAME, "prompt": [20, 21, 22], "stream": True,
                       "max_tokens": max_tokens, "ignore_eos": True})
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    received = b""
    while received.count(b"data: ") < 2:
        chunk = sock.recv(4096)
        assert chunk
        received += chunk
    assert metric_value(metrics(served.base_url), "mini_engine:kv_cache_blocks_used") > 0
    sock.close()
    deadline = time.monotonic() + 20
    while True:
        text = metrics(served.base_url)
        if metric_value(text, "mini_engine:kv_cache_blocks_used") == 0:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert metric_value(text, "mini_engine:num_requests_running") == 0
    assert metric_value(text, "mini_engine:request_client_aborts_total") == aborts + 1
    # Aborted early: far fewer tokens than the request asked for were generated.
    assert metric_value(text, "mini_engine:generation_tokens_total") - generated < max_tokens // 2
