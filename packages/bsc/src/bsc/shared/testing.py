"""Test helpers for shared caches: a real Redis server on loopback, and a cache in another process.

:class:`RedisServer` starts ``redis-server`` (the Debian package ``redis-server``, or any
binary on ``PATH``) on 127.0.0.1 at a free port, with an append-only file synced on every write,
and can kill it (SIGKILL) and start it again on the same port and data. :class:`RedisCluster`
starts a cluster of such servers. :class:`Worker` runs a :class:`~bsc.shared.engine.SharedEngine`
in a child process and drives it with JSON lines, so tests and benchmarks can kill processes
for real. Used by bsc's own tests and ``benchmarks/shared_*.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["INSTALL_HINT", "RedisCluster", "RedisServer", "Worker", "free_port", "redis_server_binary"]

INSTALL_HINT = (
    "redis-server not found on PATH: install it with `sudo apt-get install redis-server redis-tools` "
    "(Debian/Ubuntu) or `brew install redis` (macOS)"
)


def redis_server_binary() -> str:
    """The path of ``redis-server``; ``RuntimeError`` (with how to install it) when missing."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A free port on 127.0.0.1; with ``cluster``, one at most 55535 whose cluster bus port
    (+10000) is free too, as a cluster node needs."""
    if not cluster:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 for tests: ``url``, :meth:`kill` (SIGKILL),
    :meth:`start` again (same port, same data), :meth:`stop`."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        extra: list[str] | None = None,
        cluster: bool = False,
        tls: bool = False,
    ) -> None:
        self.binary = redis_server_binary()
        self.port = free_port(cluster=cluster)
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="bsc-redis-") if directory is None else directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra or [])
        self.tls = tls
        if tls:
            _make_certificates(self.dir)
            self.extra += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.dir / "server.crt"),
                "--tls-key-file", str(self.dir / "server.key"),
                "--tls-ca-cert-file", str(self.dir / "ca.crt"),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; with ``tls``, ``rediss://`` trusting the test CA."""
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.dir / 'ca.crt'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            *(() if self.tls else ("--port", str(self.port))),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "no",
            *self.extra,
        ]  # fmt: skip
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115  (owned by the child)
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()  # never left running behind a failed start
        self.process = None
        raise RuntimeError(f"redis-server did not answer within 10 s: {(self.dir / 'redis.log').read_text()[-2000:]}")

    def ping(self) -> bool:
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=0.5))
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
                    sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save (the append-only file has every write)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_certificates(folder: Path) -> None:
    """A test CA and a certificate for 127.0.0.1 signed by it (``openssl``, from the OS)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl not found on PATH: install it with `sudo apt-get install openssl`")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    # The extensions Python 3.13's strict verification (VERIFY_X509_STRICT) asks for.
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bsc test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip


class RedisCluster:
    """A Redis Cluster of ``masters`` servers on loopback (no replicas), made with
    ``redis-cli --cluster create``; ``url`` names its first node."""

    def __init__(self, masters: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError(INSTALL_HINT)
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                self.nodes.append(
                    RedisServer(extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"], cluster=True)
                )
            self._create(cli)
        except BaseException:
            self.stop()
            raise

    def _create(self, cli: str) -> None:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = subprocess.run(
                [cli, "-p", str(self.nodes[0].port), "cluster", "info"], capture_output=True, text=True, timeout=10
            ).stdout
            if "cluster_state:ok" in out:
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis cluster did not become ready")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Worker:
    """A shared engine in a child process (``python -m bsc.shared.testing``), driven by JSON
    lines: ``call(op, **args)`` returns the answer. Codes travel as lists of ints."""

    def __init__(self, url: str, *, code_bits: int = 256, max_entries: int = 100_000, env: Any = None) -> None:
        self.url = url
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bsc.shared.testing", url, str(code_bits), str(max_entries)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.call("ping") == "pong"

    def call(self, op: str, **args: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["ok"]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError, OSError):
                self.call("close")
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _serve(url: str, code_bits: int, max_entries: int) -> None:
    """The child side of :class:`Worker`."""
    import numpy as np

    from bsc.shared import connect

    engine = connect(url, code_bits=code_bits, max_entries=max_entries, fingerprint="bsc-test")

    def code(words: list[int]) -> Any:
        return np.array(words, dtype=np.uint64)

    def entry(found: Any) -> Any:
        return None if found is None else [found[0], found[2].decode("latin-1")]

    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "ping":
                result: Any = "pong"
            elif op == "put":
                result = engine.put(
                    code(request["code"]),
                    request["payload"].encode("latin-1"),
                    namespace=request.get("namespace"),
                    ttl=request.get("ttl"),
                    key=request.get("key"),
                )
            elif op == "put_many":
                result = [
                    engine.put(code(c), p.encode("latin-1"), namespace=request.get("namespace"), ttl=request.get("ttl"))
                    for c, p in request["items"]
                ]
            elif op == "lookup":
                result = entry(
                    engine.lookup(
                        code(request["code"]), request.get("max_distance"), namespace=request.get("namespace")
                    )
                )
            elif op == "lookup_key":
                result = entry(engine.lookup_key(request["key"], namespace=request.get("namespace")))
            elif op == "delete":
                result = engine.delete(request["id"])
            elif op == "delete_namespace":
                result = engine.delete_namespace(request["namespace"])
            elif op == "clear":
                engine.clear()
                result = None
            elif op == "entries":
                result = sorted(
                    [int(g), found[2].decode("latin-1")]
                    for g in engine.lru_ids().tolist()
                    if (found := engine.peek(int(g))) is not None
                )
            elif op == "wait_synced":
                result = engine.wait_synced(request.get("timeout", 10.0))
            elif op == "stats":
                result = {**engine.stats(), **engine.shared_stats(), "len": len(engine)}
            elif op == "close":
                engine.close()
                result = None
            else:
                raise ValueError(f"unknown op {op!r}")
            answer = {"ok": result}
        except Exception as err:  # reported to the driver
            answer = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
