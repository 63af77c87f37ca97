"""Load test of the caching proxy (`bsc serve`): 200 concurrent connections, loopback only.

    uv run --extra server python benchmarks/proxy_load.py               # 30 s per phase
    uv run --extra server python benchmarks/proxy_load.py --duration 10 --connections 50

Starts two processes on 127.0.0.1: the fake OpenAI-compatible upstream (``bsc.testing.
FakeChatUpstream``, answering after ``--upstream-delay`` seconds, default 20 ms) and
``bsc serve`` in front of it with the default local embedder. Then ``wrk`` (Debian: ``apt-get install
wrk``; a C load generator, so the client's own cost stays small) holds ``--connections``
connections busy for ``--duration`` seconds on 2 threads in each of three phases, one after the
other, first with one connection (each request's own cost, no queueing), then with
``--connections``:

- **direct**: chat completions sent to the upstream itself (the baseline);
- **hit**: through the proxy, each request one of 200 prompts stored beforehand, verbatim (the
  exact path: no embedding, no upstream call);
- **miss**: through the proxy, every prompt new (embedding, scan, the upstream call, the store).

Prompts are four nouns picked by the digits of a number (``prompt(n)``), so prompts of
different numbers are unrelated; the proxy's own counters (``/metrics``) of hits and misses are
reported too, to show what each phase really did.

For each phase: requests/s, latency p50/p99, errors (connect, read, write and timeout errors,
and any status but 2xx/3xx). The
added latency of a hit and of a miss is the proxy's percentile minus the direct one. All three
processes share this machine's cores, so the numbers are what one 2-core box does serving and
generating load at once. Results go to ``benchmarks/results/proxy_load.json`` with machine info.

``--local-build int8-dynamic`` serves with that build of the local embedder (``$BSC_LOCAL_BUILD``
for the proxy process); ``--phases miss`` runs only the named phases, e.g. to compare the miss
path of two builds:

    uv run --extra server python benchmarks/proxy_load.py --phases direct,miss --duration 10 \
        --local-build int8-weights --out benchmarks/results/proxy_load_int8_weights.tmp.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results

HERE = Path(__file__).resolve().parent
UPSTREAM = """
import sys, uvicorn
from bsc.testing import FakeChatUpstream
uvicorn.run(FakeChatUpstream(delay=float(sys.argv[2])).app, host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", access_log=False, backlog=4096)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with status {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def body(prompt: str) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": prompt}]}


# Prompts are four nouns picked by the digits of a number, so different numbers make unrelated
# prompts (a miss really misses) and the same number the same prompt (a hit is a verbatim repeat).
WORDS = [
    "apple",
    "river",
    "engine",
    "piano",
    "tiger",
    "cloud",
    "bridge",
    "candle",
    "desert",
    "forest",
    "garden",
    "hammer",
    "island",
    "jacket",
    "kettle",
    "ladder",
    "magnet",
    "needle",
    "ocean",
    "pencil",
    "quartz",
    "rocket",
    "saddle",
    "tunnel",
    "umbrella",
    "violin",
    "wallet",
    "yacht",
    "zebra",
    "anchor",
    "basket",
    "cactus",
    "dolphin",
    "eagle",
    "feather",
    "glacier",
    "harbor",
    "igloo",
    "jungle",
    "kayak",
    "lantern",
    "meadow",
    "nickel",
    "orchard",
    "parrot",
    "quiver",
    "radar",
    "satellite",
    "tractor",
    "unicorn",
    "volcano",
    "walrus",
    "xylophone",
    "yogurt",
    "zipper",
    "acorn",
    "blender",
    "compass",
    "dragon",
    "elbow",
    "falcon",
    "goblet",
    "helmet",
    "insect",
    "jigsaw",
    "koala",
    "lemon",
    "mirror",
    "nectar",
    "oyster",
    "pepper",
    "quilt",
    "raccoon",
    "spider",
    "trumpet",
    "utensil",
    "vault",
    "whistle",
    "yarn",
    "zinc",
    "asteroid",
    "biscuit",
    "canyon",
    "diamond",
    "emerald",
    "fountain",
    "gravel",
    "honey",
    "iceberg",
    "jasmine",
    "keyboard",
    "lobster",
    "marble",
    "noodle",
    "octopus",
    "pyramid",
    "saxophone",
    "tornado",
    "waffle",
    "scarecrow",
]
assert len(WORDS) == 100


def prompt(n: int) -> str:
    """The prompt of number ``n``, as the wrk script makes it."""
    return " ".join(WORDS[(n // 100**k) % 100] for k in range(4)) + "?"


WRK_SCRIPT = r"""
-- One JSON chat request per call: a stored prompt (mode "hit") or a new one (mode "miss").
local words = {WORDS}
local mode = os.getenv("BSC_LOAD_MODE")
local counter = 0
local threads = {}
local function prompt(n)
  local out = {}
  for k = 0, 3 do out[#out + 1] = words[math.floor(n / 100 ^ k) % 100 + 1] end
  return table.concat(out, " ") .. "?"
end
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
request = function()
  counter = counter + 1
  local n
  if mode == "hit" then
    n = (counter % 200) * 1010101
  else
    n = (id * 49999991 + counter * 7368787) % 100000000
  end
  local body = '{"model":"fake-model","messages":[{"role":"user","content":"' .. prompt(n) .. '"}]}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                  ["Authorization"] = "Bearer sk-load"}, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BSC {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("{WORDS}", "{" + ", ".join(f'"{w}"' for w in WORDS) + "}")


def phase(url: str, mode: str, connections: int, duration: float, script: Path) -> dict[str, Any]:
    """wrk holding ``connections`` connections busy for ``duration`` seconds (2 threads)."""
    command = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, "BSC_LOAD_MODE": mode}
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BSC "))
    raw = json.loads(line[4:])
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return {
        "requests": raw["requests"],
        "requests_per_second": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase (default 30)")
    parser.add_argument("--connections", type=int, default=200, help="concurrent connections (default 200)")
    parser.add_argument("--upstream-delay", type=float, default=0.02, help="upstream answer time (default 0.02 s)")
    parser.add_argument("--local-build", help="the local embedder's build for the proxy ($BSC_LOCAL_BUILD)")
    parser.add_argument("--phases", default="direct,hit,miss", help="phases to run (default direct,hit,miss)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "proxy_load.json")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",")]
    if not phases or not set(phases) <= {"direct", "hit", "miss"}:
        sys.exit(f"--phases: a comma-separated subset of direct,hit,miss, got {args.phases!r}")
    if shutil.which("wrk") is None:
        sys.exit("proxy_load.py needs wrk: apt-get install wrk")
    up_port, proxy_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    proxy_url = f"http://127.0.0.1:{proxy_port}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.local_build is not None:
            env["BSC_LOCAL_BUILD"] = args.local_build
        with (logs / "upstream.log").open("wb") as out:
            upstream = subprocess.Popen(
                [sys.executable, "-c", UPSTREAM, str(up_port), str(args.upstream_delay)],
                stdout=out,
                stderr=out,
                env=env,
            )
        serve = [sys.executable, "-m", "bsc", "serve", "--upstream", upstream_url, "--port", str(proxy_port)]
        with (logs / "proxy.log").open("wb") as out:
            proxy = subprocess.Popen([*serve, "--log-level", "warning"], stdout=out, stderr=out, env=env)
        try:
            wait_ready(f"http://127.0.0.1:{up_port}/docs-none", upstream)
            wait_ready(f"http://127.0.0.1:{proxy_port}/healthz", proxy)
            stored = [prompt(i * 1010101) for i in range(200)]
            with httpx.Client(timeout=60, headers={"Authorization": "Bearer sk-load"}) as client:
                for text in stored:  # warm the cache (and the embedder)
                    client.post(proxy_url + "/chat/completions", json=body(text)).raise_for_status()
            script = logs / "load.lua"
            script.write_text(WRK_SCRIPT)
            runs = []
            # Unloaded first (one connection: each request's own cost), then the load.
            for connections, duration in [(1, min(args.duration, 10.0)), (args.connections, args.duration)]:
                rows = {}
                for name, url in [("direct", upstream_url), ("hit", proxy_url), ("miss", proxy_url)]:
                    if name not in phases:
                        continue
                    rows[name] = phase(url + "/chat/completions", name, connections, duration, script)
                    print(connections, name, rows[name], flush=True)
                runs.append(summarise(rows, connections, duration))
            metrics = httpx.get(f"http://127.0.0.1:{proxy_port}/metrics").text
        finally:
            for process in (proxy, upstream):
                process.terminate()
                process.wait(timeout=60)
    for run in runs:
        run["upstream_delay_ms"] = args.upstream_delay * 1000
        run["local_build"] = args.local_build or os.environ.get("BSC_LOCAL_BUILD") or "default"
        run["proxy_metrics_after_all_runs"] = [
            line
            for line in metrics.splitlines()
            if line.startswith(("bsc_proxy_requests_total", "bsc_proxy_upstream_errors_total"))
        ]
        print(f"\n{run['connections']} connection(s), {run['duration_s']:g} s per phase:")
        print("| phase | requests/s | p50 | p99 | added p50 | added p99 | errors |")
        print("|---|---|---|---|---|---|---|")
        for name, r in run["phases"].items():
            added = run["added_latency_ms"].get(name, {"p50": "—", "p99": "—"})
            print(
                f"| {name} | {r['requests_per_second']} | {r['p50_ms']} ms | {r['p99_ms']} ms | {added['p50']} | "
                f"{added['p99']} | {sum(r['errors'].values())} |"
            )
    write_results(args.out, runs)


def summarise(rows: dict[str, dict[str, Any]], connections: int, duration: float) -> dict[str, Any]:
    return {
        "connections": connections,
        "duration_s": duration,
        "phases": rows,
        "added_latency_ms": {
            kind: {
                "p50": round(rows[kind]["p50_ms"] - rows["direct"]["p50_ms"], 2),
                "p99": round(rows[kind]["p99_ms"] - rows["direct"]["p99_ms"], 2),
            }
            for kind in ("hit", "miss")
            if kind in rows and "direct" in rows
        },
        "errors": sum(sum(r["errors"].values()) for r in rows.values()),
    }


if __name__ == "__main__":
    main()
