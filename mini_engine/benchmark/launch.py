"""Start and stop a `python -m mini_engine.serve` process per benchmark configuration (--launch).

A configuration is `name` or `name=SERVER ARGS`. Bare `nvfp4` adds `--quantization nvfp4` (quantize on
load; use `nvfp4=` for a checkpoint that already is NVFP4) and bare `bf16` adds
`--quantization none`; the shared --server-args come first. The server runs in its own process group
with output in `<out>/server_<name>.log`; stop() sends SIGINT (uvicorn's graceful shutdown), then
SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LaunchConfig", "parse_launch", "ServerProcess", "free_port"]

_NAMED_ARGS = {"nvfp4": ["--quantization", "nvfp4"], "bf16": ["--quantization", "none"]}


@dataclass(frozen=True)
class LaunchConfig:
    name: str
    args: tuple[str, ...]


def parse_launch(spec: str, shared_args: str = "") -> LaunchConfig:
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not name:
        raise ValueError(f"--launch {spec!r}: expected NAME or NAME=ARGS")
    extra = shlex.split(rest) if sep else _NAMED_ARGS.get(name, [])
    return LaunchConfig(name, tuple(shlex.split(shared_args)) + tuple(extra))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, config: LaunchConfig, log_dir: Path, host: str = "127.0.0.1",
                 port: int | None = None):
        self.config = config
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_dir) / f"server_{config.name}.log"
        self.cmd = [sys.executable, "-m", "mini_engine.serve", "--host", host,
                    "--port", str(self.port), *config.args]
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")  # noqa: SIM115 - owned by the child for its lifetime
        log.write("$ " + shlex.join(self.cmd) + "\n")
        log.flush()
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ,
                                                                  "PYTHONUNBUFFERED": "1"})
        log.close()
        # For a supervising script: if this process is killed, it can still stop the server group.
        self.log_path.with_suffix(".pid").write_text(f"{self.proc.pid}\n")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stop the server (its whole process group); returns its exit code."""
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 10.0),
                          (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)  # our child's own group (start_new_session)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        code = self.proc.poll()
        if code is not None:
            self.log_path.with_suffix(".pid").unlink(missing_ok=True)
        return code
