"""Helpers for the server tests: raw HTTP calls, Prometheus parsing, error-shape checks."""

from __future__ import annotations

import http.client
import json
import re


def http_request(base_url: str, method: str, path: str, body: bytes | str | None = None,
                 headers: dict | None = None) -> tuple[int, bytes]:
    """A raw HTTP call (for malformed bodies the openai client would never send)."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric_value(text: str, name: str) -> float:
    """The value of the first sample of `name` in Prometheus text."""
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    if m is None:
        raise KeyError(name)
    return float(m.group(1))


def metrics(base_url: str) -> str:
    status, body = http_request(base_url, "GET", "/metrics")
    assert status == 200
    return body.decode()


def error_of(body: bytes) -> dict:
    payload = json.loads(body)
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    return payload["error"]
