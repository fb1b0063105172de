"""Server behaviour against the FakeEngine test double: protocol, errors, overload, failures, aborts.

The real-engine end-to-end tests (built-in model) are in test_server_e2e.py; here the engine is a
deterministic stand-in so every answer is known exactly and failures can be injected.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import openai
import pytest
from fake_engine import FakeEngine, fake_token
from server_helpers import error_of, http_request, metric_value, metrics

from mini_engine.sampling_params import SamplingParams
from mini_engine.server.api_server import build_app
from mini_engine.server.threaded import ThreadedServer

MODEL = "fake-model"


@pytest.fixture(scope="module")
def server(default_tokenizer):
    engine = FakeEngine(default_tokenizer, max_model_len=256, max_num_seqs=8)
    app = build_app(engine, model_names=[MODEL, "alias"], max_model_len=256,
                    params_cls=SamplingParams)
    with ThreadedServer(app) as srv:
        srv.engine = engine
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def expected_text(tok, prompt_ids: list[int], n: int) -> tuple[list[int], str]:
    out: list[int] = []
    for _ in range(n):
        out.append(fake_token(prompt_ids, out, len(tok)))
    return out, tok.decode(out)


def test_completion_text_prompt(client, default_tokenizer):
    r = client.completions.create(model=MODEL, prompt="The if statement", max_tokens=7)
    ids = default_tokenizer.encode("The if statement")
    _, text = expected_text(default_tokenizer, ids, 7)
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 7)
    assert r.model == MODEL and r.object == "text_completion"


def test_completion_token_ids_and_batch(client, default_tokenizer):
    prompts = [[20, 21, 22], [30, 31]]
    r = client.completions.create(model="alias", prompt=prompts, max_tokens=3)
    assert r.model == MODEL  # aliases resolve to the first served name
    got = sorted((c.index, c.text) for c in r.choices)
    assert got == [(i, expected_text(default_tokenizer, p, 3)[1]) for i, p in enumerate(prompts)]
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 6


def test_completion_stream_matches_non_stream(client):
    kw = dict(model=MODEL, prompt="Lists are", max_tokens=12)
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_stop_token_ids(client, default_tokenizer):
    ids = [40, 41, 42]
    toks, _ = expected_text(default_tokenizer, ids, 5)
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=20,
                                  extra_body={"stop_token_ids": [toks[2]]})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 3


def test_chat_uses_template_and_streams(client, default_tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What does json.dumps do?"}]
    prompt = default_tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)
    ids = default_tokenizer.encode(prompt, add_special_tokens=False)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected_text(default_tokenizer, ids, 6)[1]
    assert r.usage.prompt_tokens == len(ids)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs, param", [
    (dict(model="no-such-model"), "model"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=2), "n"),
    (dict(max_tokens=256), "max_tokens"),  # prompt + completion > max_model_len 256
    (dict(prompt="word " * 300), "prompt"),  # the prompt alone exceeds the context
    (dict(prompt=[5, 99999]), "prompt"),  # token id outside the vocabulary
    (dict(prompt=[]), "prompt"),
    (dict(logprobs=2), "logprobs"),
    (dict(extra_body={"top_k": 2**63}), "top_k"),  # would overflow a tensor inside engine.step()
    (dict(seed=2**64), "seed"),
    (dict(extra_body={"stop_token_ids": [-1]}), "stop_token_ids"),
    (dict(extra_body={"stop_token_ids": [5, 2**70]}), "stop_token_ids"),  # outside the vocabulary
    (dict(extra_body={"min_tokens": 5}), "min_tokens"),  # unsupported: refused, not ignored
    (dict(extra_body={"response_format": {"type": "json_object"}}), "response_format"),
    (dict(logprobs=0), "logprobs"),  # a count on /v1/completions: 0 asks for the sampled token's
])
def test_bad_requests_are_openai_400s(client, kwargs, param):
    args = dict(model=MODEL, prompt="hello", max_tokens=4) | kwargs
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**args)
    err = info.value.body
    assert err["code"] == 400 and err["type"] == "BadRequestError" and err["param"] == param
    assert err["message"]


def test_non_text_chat_parts_are_refused(client):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
    assert info.value.body["param"] == "messages" and "only text parts" in info.value.body["message"]


def test_malformed_and_invalid_bodies(server):
    cases = [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": MODEL}), "prompt"),  # missing field: 400, not FastAPI's 422
        (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "many"}), "max_tokens"),
    ]
    for body, param in cases:
        status, raw = http_request(server.base_url, "POST", "/v1/completions", body)
        assert status == 400, raw
        err = error_of(raw)
        assert err["code"] == 400 and err["param"] == param
    status, raw = http_request(server.base_url, "POST", "/v1/chat/completions",
                               json.dumps({"model": MODEL, "messages": []}))
    assert status == 400 and error_of(raw)["param"] == "messages"


def test_bodies_no_tokenizer_can_encode_are_400s_and_counted(server):
    before = metrics(server.base_url)
    cases = [  # JSON nested past Python's recursion limit; \ud800 escapes decode to lone surrogates
        ("/v1/completions", b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}", None),
        ("/v1/completions", b'{"prompt": "hi \\ud800", "max_tokens": 2}', "prompt"),
        ("/v1/completions", b'{"prompt": "hi", "model": "\\ud800"}', "model"),
        ("/v1/completions", b'{"prompt": "hi", "\\udc00": 1}', None),
        ("/v1/completions", b'{"prompt": "raw \xed\xa0\x80 bytes"}', "prompt"),  # json.loads: surrogatepass
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udc00"}]}', "messages"),
    ]
    for path, body, param in cases:
        status, raw = http_request(server.base_url, "POST", path, body)
        assert status == 400, raw
        assert error_of(raw)["param"] == param
    assert "messages[0].content: holds an unpaired UTF-16 surrogate" in error_of(raw)["message"]
    after = metrics(server.base_url)

    def count(text: str, endpoint: str) -> float:
        try:
            return metric_value(text, f'mini_engine:http_requests_total{{model_name="{MODEL}",'
                                      f'endpoint="{endpoint}",status="400"}}')
        except KeyError:
            return 0

    assert count(after, "completions") - count(before, "completions") == 5
    assert count(after, "chat_completions") - count(before, "chat_completions") == 1


def test_unexpected_errors_are_500s_and_counted(default_tokenizer, monkeypatch):
    engine = FakeEngine(default_tokenizer, max_model_len=256)
    app = build_app(engine, model_names=[MODEL], max_model_len=256, params_cls=SamplingParams)
    from mini_engine.server.openai_serving import OpenAIServing

    def broken(self, req, raw):
        raise RuntimeError("handler bug")

    monkeypatch.setattr(OpenAIServing, "completions", broken)
    with ThreadedServer(app) as srv:
        status, raw = http_request(srv.base_url, "POST", "/v1/completions", json.dumps({"prompt": "x"}))
        assert status == 500 and "handler bug" in error_of(raw)["message"]
        assert metric_value(metrics(srv.base_url), f'mini_engine:http_requests_total{{model_name="{MODEL}",'
                                                   'endpoint="completions",status="500"}') == 1


def test_chat_template_kwargs_may_not_replace_the_template(client):
    messages = [{"role": "user", "content": "hi"}]
    for key in ("chat_template", "tokenize", "conversation"):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2,
                                           extra_body={"chat_template_kwargs": {key: "{{ 'x' }}"}})
        err = info.value.body
        assert err["param"] == "chat_template_kwargs" and f"chat_template_kwargs.{key}" in err["message"]
    # template variables still pass through
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.usage.completion_tokens == 2


def test_reserved_template_kwargs_hold_even_for_a_wrapper_tokenizer():
    from mini_engine.server.openai_serving import _reserved_template_kwargs

    def wrapped(conversation, documents=None, **kwargs):  # a signature that hides the real arguments
        return ""

    reserved = _reserved_template_kwargs(wrapped)
    assert {"chat_template", "tokenize", "conversation"} <= reserved and "documents" not in reserved
    assert {"chat_template", "tokenize"} <= _reserved_template_kwargs(None)


def test_chat_errors_name_the_field_the_client_sent(client):
    messages = [{"role": "user", "content": "hi"}]
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=messages, **{field: 0})
        assert info.value.body["param"] == field and info.value.body["message"].startswith(field)
    # chat's logprobs is a flag: 0 / false leave it off (top_logprobs is the count)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2,
                                       extra_body={"logprobs": 0})
    assert r.usage.completion_tokens == 2


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL, "alias"]
    assert http_request(server.base_url, "GET", "/health")[0] == 200
    text = metrics(server.base_url)
    assert metric_value(text, "mini_engine:kv_cache_blocks_total") == 256
    assert ('mini_engine:nvfp4_kernel_info{model_name="fake-model",'
            'layer="model.layers.0.mlp.down_proj",m_bucket="1-16",kernel="sm90_w4a16_64x64"} 1'
            in text)
    assert metric_value(text, "mini_engine:generation_tokens_total") > 0


def test_concurrent_requests_single_engine_thread(server, default_tokenizer):
    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        tasks = [aclient.completions.create(model=MODEL, prompt=[50 + i, 60], max_tokens=5 + i % 3)
                 for i in range(24)]
        results = await asyncio.gather(*tasks)
        await aclient.close()
        return [r.choices[0].text for r in results]

    texts = asyncio.run(run())
    assert texts == [expected_text(default_tokenizer, [50 + i, 60], 5 + i % 3)[1]
                     for i in range(24)]
    assert len(server.engine.thread_ids) == 1  # add/abort/step/stats all on the engine thread


def _wait_idle(base_url: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = metrics(base_url)
        if (metric_value(text, "mini_engine:kv_cache_blocks_used") == 0
                and metric_value(text, "mini_engine:num_requests_running") == 0):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"KV not freed:\n{text}")
        time.sleep(0.05)


def test_stream_disconnect_aborts_and_frees_kv(server):
    server.engine.step_delay_s = 0.02  # 200 tokens would take 4 s: we leave long before
    try:
        before = metric_value(metrics(server.base_url), "mini_engine:request_client_aborts_total")
        host, port = server.base_url.removeprefix("http://").split(":")
        body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 200, "stream": True})
        sock = socket.create_connection((host, int(port)))
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      f"application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        received = b""
        while b"data: " not in received:  # headers first, then the first event
            chunk = sock.recv(4096)
            assert chunk, "server closed the stream early"
            received += chunk
        assert metric_value(metrics(server.base_url), "mini_engine:kv_cache_blocks_used") > 0
        sock.close()
        text = _wait_idle(server.base_url)
        assert metric_value(text, "mini_engine:request_client_aborts_total") == before + 1
    finally:
        server.engine.step_delay_s = 0.0


def test_disconnect_while_the_body_arrives_is_a_499_not_a_500(server):
    def count(status: int) -> float:
        try:
            return metric_value(metrics(server.base_url), f'mini_engine:http_requests_total{{model_name="{MODEL}",'
                                                          f'endpoint="completions",status="{status}"}}')
        except KeyError:
            return 0

    before_499, before_500 = count(499), count(500)
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"prompt\": ")  # then hang up mid-body
    deadline = time.monotonic() + 10
    while count(499) == before_499 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(499) == before_499 + 1 and count(500) == before_500


def test_non_stream_disconnect_aborts(server):
    server.engine.step_delay_s = 0.02
    try:
        with pytest.raises(openai.APITimeoutError):
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0,
                          timeout=0.3).completions.create(model=MODEL, prompt="x", max_tokens=200)
        _wait_idle(server.base_url)
    finally:
        server.engine.step_delay_s = 0.0


def test_step_failure_fails_requests_but_not_the_server(server, client):
    server.engine.fail_next_step = True
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=MODEL, prompt="boom", max_tokens=3)
    assert "injected step failure" in info.value.body["message"]
    assert client.completions.create(model=MODEL, prompt="ok", max_tokens=3).usage \
        .completion_tokens == 3
    _wait_idle(server.base_url)


def test_step_failure_in_a_streamed_batch_is_not_a_client_abort(server):
    """An engine failure mid-stream ends the batch's choices in-band; the client never left."""
    before = metric_value(metrics(server.base_url), "mini_engine:request_client_aborts_total")
    server.engine.step_delay_s = 0.02
    try:
        host, port = server.base_url.removeprefix("http://").split(":")
        body = json.dumps({"model": MODEL, "prompt": ["a b", "c d"], "max_tokens": 100, "stream": True})
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode())
            received = b""
            while b"data: " not in received:
                received += sock.recv(4096)
            server.engine.fail_next_step = True  # both choices are mid-stream now
            while b"[DONE]" not in received:
                chunk = sock.recv(4096)
                assert chunk, received[-500:]
                received += chunk
        assert b"injected step failure" in received  # reported in-band, as vLLM does
    finally:
        server.engine.step_delay_s = 0.0
    text = _wait_idle(server.base_url)
    assert metric_value(text, "mini_engine:request_client_aborts_total") == before


def test_overload_answers_503(default_tokenizer):
    engine = FakeEngine(default_tokenizer, max_num_seqs=1, step_delay_s=0.05)
    app = build_app(engine, model_names=[MODEL], max_model_len=256, params_cls=SamplingParams,
                    max_waiting=2)

    async def run(base_url: str) -> list:
        aclient = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        tasks = [aclient.completions.create(model=MODEL, prompt="x", max_tokens=10)
                 for _ in range(8)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await aclient.close()
        return results

    with ThreadedServer(app) as srv:
        results = asyncio.run(run(srv.base_url))
        ok = [r for r in results if not isinstance(r, Exception)]
        rejected = [r for r in results if isinstance(r, openai.APIStatusError)]
        assert len(ok) + len(rejected) == 8 and 1 <= len(ok) <= 3
        assert all(r.status_code == 503 and r.body["code"] == 503 for r in rejected)
        text = _wait_idle(srv.base_url)
        assert metric_value(text, "mini_engine:request_rejected_overload_total") == len(rejected)


def test_prompts_are_tokenized_off_the_event_loop(default_tokenizer, monkeypatch):
    """A long prompt's tokenization must not stall other requests' streams on the event loop."""
    import threading

    from mini_engine.server.openai_serving import OpenAIServing

    seen: list[str] = []
    for name in ("completion_prompts", "chat_prompt"):
        orig = getattr(OpenAIServing, name)

        def record(self, *args, _orig=orig):
            seen.append(threading.current_thread().name)
            return _orig(self, *args)

        monkeypatch.setattr(OpenAIServing, name, record)
    engine = FakeEngine(default_tokenizer, max_model_len=256, max_num_seqs=2)
    app = build_app(engine, model_names=[MODEL], max_model_len=256, params_cls=SamplingParams)
    with ThreadedServer(app) as srv:
        c = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="x", max_retries=0)
        assert c.completions.create(model=MODEL, prompt="hello there", max_tokens=3).choices[0].text
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert len(seen) == 2 and all(n.startswith("tokenize") for n in seen), seen


def test_metrics_keep_every_digit_of_large_counters():
    from mini_engine.server.metrics import ServerCounters, render_metrics

    stats = {"generated_tokens_total": 1_234_572, "prompt_tokens_total": 2**53 + 2, "running": 3}
    text = render_metrics(stats, ServerCounters(), "m")
    assert 'mini_engine:generation_tokens_total{model_name="m"} 1234572\n' in text  # not 1.23457e+06
    assert f'mini_engine:prompt_tokens_total{{model_name="m"}} {2**53 + 2}\n' in text
    assert 'mini_engine:num_requests_running{model_name="m"} 3\n' in text
