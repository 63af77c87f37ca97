"""``bsc serve --redis URL [--workers N]``: proxies in several processes answering from one cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bsc import SemanticCache
from bsc.cli import main as cli_main
from bsc.server import create_app
from bsc.shared.testing import RedisServer
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeChatUpstream, str]]:
    fake = FakeChatUpstream()
    with ServerThread(fake.app) as server:
        yield fake, server.url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = tmp_path / f"{name}.log"
    command = [sys.executable, "-m", "bsc", "serve", "--port", str(port), "--log-level", "warning", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    return process, f"http://127.0.0.1:{port}", log


def wait_healthy(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"bsc serve did not start: {log.read_text()}"
        time.sleep(0.1)


def ask(base: str, question: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": question}]}
    # A new connection per request, so that the kernel may hand it to any worker.
    with httpx.Client() as client:
        return client.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})


def test_workers_and_separate_servers_share_one_cache(
    tmp_path: Path, redis_server: Any, upstream: tuple[FakeChatUpstream, str]
) -> None:
    url = f"{redis_server.url}?prefix=proxy"
    fake, up = upstream
    pooled, pooled_base, pooled_log = serve(
        tmp_path, "pooled", "--upstream", up + "/v1", "--redis", url, "--workers", "2"
    )
    single, single_base, single_log = serve(tmp_path, "single", "--upstream", up + "/v1", "--redis", url)
    try:
        wait_healthy(pooled, pooled_base, pooled_log)
        wait_healthy(single, single_base, single_log)
        questions = [
            "How do I bake sourdough bread at home?",
            "What is the capital city of Australia?",
            "Why is the sky blue during the day?",
            "How many moons does Jupiter have?",
            "Who painted the Mona Lisa?",
            "What is a good way to learn the violin?",
        ]
        answers = {}
        for q in questions:
            first = ask(pooled_base, q)
            assert first.status_code == 200 and first.headers["x-bsc-cache"] == "miss"
            answers[q] = first.json()["choices"][0]["message"]["content"]
        paid = fake.requests
        time.sleep(0.5)  # replication to the other processes (milliseconds; generous on a busy CI machine)
        for base in (single_base, pooled_base, pooled_base):
            for q in questions:
                again = ask(base, q)
                assert again.headers["x-bsc-cache"] == "hit", (base, q)
                assert again.json()["choices"][0]["message"]["content"] == answers[q]
        assert fake.requests == paid  # not one answer paid twice
        metrics = httpx.get(single_base + "/metrics").text
        assert "bsc_shared_connected 1.0" in metrics and "bsc_shared_writes_dropped 0.0" in metrics
    finally:
        for process in (pooled, single):
            process.terminate()
        for process in (pooled, single):
            assert process.wait(timeout=30) == 0, (pooled_log.read_text(), single_log.read_text())


def test_metrics_and_errors_never_show_the_password(
    tmp_path: Path, upstream: tuple[FakeChatUpstream, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with RedisServer(extra=["--requirepass", "hunter2-secret"]) as server:
        url = f"redis://default:hunter2-secret@127.0.0.1:{server.port}/0?prefix=m"
        cache = SemanticCache(WordEmbedder(), shared=url)
        app = create_app(cache, upstream[1] + "/v1", close_cache=True)
        with ServerThread(app) as proxy:
            metrics = httpx.get(proxy.url + "/metrics").text
            assert "bsc_shared_connected 1.0" in metrics and "hunter2" not in metrics
        wrong = f"redis://default:wrong-pass-77@127.0.0.1:{server.port}/0"
        assert cli_main(["serve", "--upstream", upstream[1] + "/v1", "--redis", wrong, "--port", str(free_port())]) != 0
        err = capsys.readouterr().err
        assert "wrong-pass-77" not in err and "bsc serve: error" in err


def test_serve_refuses_workers_without_redis_and_redis_with_persist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--workers", "2"]) != 0
    assert "--workers needs --redis" in capsys.readouterr().err
    argv = ["serve", "--upstream", "http://127.0.0.1:9/v1", "--redis", "redis://127.0.0.1:9/0"]
    assert cli_main([*argv, "--persist", str(tmp_path / "c.bsc")]) != 0
    assert "cannot be combined" in capsys.readouterr().err
    assert cli_main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--redis", "http://x"]) != 0
    assert "redis://" in capsys.readouterr().err
    down = f"redis://user:pw-never-shown@127.0.0.1:{free_port()}/0"
    assert cli_main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--redis", down, "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the shared store" in err and "pw-never-shown" not in err
