"""The ``bsc`` command."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bsc._version import __version__
from bsc_native import BscError


def _demo(args: argparse.Namespace) -> int:
    from bsc.demo import load_pairs, run_demo
    from bsc_backends import LocalEmbedder

    pairs, name = load_pairs(args.data, limit=args.limit)
    embedder = LocalEmbedder()
    report = run_demo(
        pairs,
        embedder,
        data_name=name,
        code_bits=args.code_bits,
        similarity_threshold=args.threshold,
        progress=not args.no_progress and not args.json,
        old_defaults=args.old_defaults,
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0


_LABELS = {
    "size": "entries",
    "max_size": "max entries",
    "exact_hits": "exact hits",
    "semantic_hits": "semantic hits",
    "near_misses": "near misses",
    "false_hit_reports": "false-hit reports",
    "tokens_saved": "tokens saved",
    "cost_saved": "cost saved",
    "memory_bytes": "memory (bytes)",
    "response_bytes": "responses (bytes)",
    "file_bytes": "file (bytes)",
}


def _checks(args: argparse.Namespace) -> int:
    from bsc.semantic.files import saved_checks

    rows = [json.dumps(check.as_pair(i), ensure_ascii=False) for i, check in enumerate(saved_checks(args.path))]
    if args.out is None:
        for row in rows:
            print(row)
        return 0
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.writelines(row + "\n" for row in rows)
    os.replace(tmp, args.out)
    print(f"bsc checks: {len(rows)} labelled pairs written to {args.out}", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from bsc.semantic import describe_file

    report = describe_file(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    histogram = report.pop("similarity_histogram", None)
    width = max(len(_LABELS.get(k, k.replace("_", " "))) for k in report)
    for key, value in report.items():
        if isinstance(value, float) and key in ("hit_rate",):
            value = f"{value:.1%}"
        if key == "content_gate":
            value = "off" if not value else ", ".join(rule for rule, on in value.items() if on) or "no rules"
        print(f"{_LABELS.get(key, key.replace('_', ' ')):<{width}}  {value}")
    if histogram:
        print("best-candidate similarity (semantic lookups):")
        top = max(histogram.values())
        for edge, count in histogram.items():
            print(f"  [{edge}, {float(edge) + 0.05:.2f})  {count:>8}  {'#' * max(1, round(30 * count / top))}")
    return 0


_SERVER_EXTRA = (
    'bsc serve needs the server extra: pip install "bsc[server]" (with uv: uv add "bsc[server]"; '
    "in a checkout of bsc: uv sync --all-packages --extra server)"
)


def _check_persist(path: str) -> Path:
    """``--persist``: a file that can be created or replaced in an existing, writable directory,
    checked before anything is served (not discovered at shutdown, when the answers are lost)."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"--persist {path}: is a directory, not a cache file")
    folder = file.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--persist {path}: {folder} is not a directory")
    if not folder.is_dir():
        raise ValueError(f"--persist {path}: the directory {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{file.name}.", suffix=".tmp"):
            pass
    except OSError as err:
        raise ValueError(f"--persist {path}: cannot write in {folder}: {err.strerror or err}") from None
    return file


_SERVE_ENV = "BSC_SERVE_OPTIONS"


def _serve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What each worker needs to build its cache and app (checked here, in the parent)."""
    persist = None if args.persist is None else str(_check_persist(args.persist))
    if args.workers > 1 and args.redis is None:
        raise ValueError("--workers needs --redis URL: separate workers would each hold a separate cache")
    if persist is not None and args.redis is not None:
        raise ValueError("--persist and --redis cannot be combined: a shared cache is kept by Redis")
    if args.redis is not None:
        from bsc.shared import check_reachable

        check_reachable(args.redis)  # a bad URL or an unreachable Redis fails here, once, not in every worker
    admin_token = args.admin_token
    if admin_token == "env":
        admin_token = os.environ.get("BSC_ADMIN_TOKEN", "")
        try:
            _token(admin_token)
        except argparse.ArgumentTypeError:
            raise ValueError(
                "--admin-token env: $BSC_ADMIN_TOKEN must hold at least 16 printable ASCII characters"
            ) from None
    shared: bool | list[str] = False
    if args.shared_namespaces is not None:
        shared = True if args.shared_namespaces == "*" else [n.strip() for n in args.shared_namespaces.split(",")]
    return {
        "cache": {
            "similarity_threshold": args.threshold,
            "max_entries": args.max_entries,
            "default_ttl": args.ttl,
            "max_temperature": args.max_temperature,
            "rescore": args.rescore,
            "content_gate": args.content_gate,
            "self_check": _self_check(args.self_check),
            "persist_path": persist,
            "shared": args.redis,
        },
        "app": {
            "upstream": args.upstream,
            "timeout": args.timeout,
            "shared_namespaces": shared,
            "admin_token": admin_token,
            "max_body": args.max_body,
            "body_timeout": args.body_timeout,
            "cache_embeddings": not args.no_embeddings_cache,
            "allow_lax_threshold": args.allow_lax_threshold,
        },
    }


def _build(settings: dict[str, Any]) -> tuple[Any, Any]:
    from bsc.semantic import SemanticCache
    from bsc.server import create_app

    options = dict(settings["cache"])
    target = options.pop("self_check", None)
    if target is not None:  # a number in the settings (they cross to --workers as JSON)
        from bsc.semantic import SelfCheck

        options["self_check"] = SelfCheck(target_wrong_rate=target)
    cache = SemanticCache(**options)
    try:
        app = create_app(cache, close_cache=True, **settings["app"])
    except BaseException:
        cache.close()
        raise
    return cache, app


def worker_app() -> Any:
    """The app of one ``bsc serve --workers N`` worker (a uvicorn factory): its settings come from
    the parent in ``$BSC_SERVE_OPTIONS``."""
    _, app = _build(json.loads(os.environ[_SERVE_ENV]))
    return app


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        import bsc.server  # noqa: F401
    except ImportError:
        print(f"bsc serve: error: {_SERVER_EXTRA}", file=sys.stderr)
        return 2
    settings = _serve_settings(args)
    persist = settings["cache"]["persist_path"]
    where = f"http://{args.host}:{args.port}/v1 -> {args.upstream}"
    if args.workers > 1:
        from bsc.shared import redact

        os.environ[_SERVE_ENV] = json.dumps(settings)
        print(f"bsc serve: {where} ({args.workers} workers sharing {redact(args.redis)})", flush=True)
        uvicorn.run(
            "bsc.cli:worker_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
        )
        return 0
    failed = 0
    cache, app = _build(settings)
    try:
        print(f"bsc serve: {where} ({len(cache)} entries)", flush=True)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
        _Server(config).run()
        state = app.state.proxy
        # Every failed save, background or final, is counted once by the cache.
        failed = max(cache.stats().save_errors, state.final_save_failed)
    finally:
        try:
            cache.close()  # already closed by the app's shutdown; here for a start that failed
        except Exception as err:
            print(f"bsc serve: error: the final save of the cache to {persist} failed: {err}", file=sys.stderr)
            failed += 1
    if failed:
        print(f"bsc serve: error: {failed} save(s) of the cache to {persist} failed (see the log)", file=sys.stderr)
        return 1
    return 0


def _uvicorn_server() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, ending normally after a graceful shutdown on SIGTERM/SIGINT
        (uvicorn re-raises the signal, which would end the process before its exit status is set)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server


def _Server(config: Any) -> Any:  # noqa: N802 - a class made on first use (uvicorn is optional)
    return _uvicorn_server()(config)


def _answer_text(response: Any) -> str:
    from bsc.policy import answer_text

    text = answer_text(response)
    return str(response) if text is None else text


def _inspect(args: argparse.Namespace) -> int:
    from bsc.semantic import list_entries

    entries = list_entries(args.path, namespace=args.namespace, limit=args.limit)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        expires = "never" if e["expires_at"] is None else f"{e['expires_at']:.0f}"
        print(
            f"{e['id']:>14}  {e['namespace'] or '-':<24.24}  uses {e['access_count']:<5} expires {expires:<11} "
            f"{(e['prompt'] or '')[:60]!r} -> {_answer_text(e['response'])[:60]!r}"
        )
    print(f"{len(entries)} entries, most recently used first")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from bsc.bench import bench
    from bsc.demo import load_pairs
    from bsc_backends import LocalEmbedder

    sizes = [_size(s) for s in args.sizes.split(",")]
    pairs = [(p.text_a, p.text_b) for p in load_pairs(None, limit=args.pairs)[0]]
    embedder = LocalEmbedder()
    rows = []
    for n in tqdm(sizes, desc="sizes", disable=args.json or args.no_progress):
        rows.append(bench(n, embedder, pairs, args.rounds))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"SemanticCache lookups, local embedder, {len(pairs)} question pairs x {args.rounds} rounds, medians:")
    print(f"{'entries':>10}  {'exact hit':>10}  {'semantic':>10}  {'embedding':>10}  {'scan':>10}  {'B/entry':>8}")
    for r in rows:
        print(
            f"{r['n']:>10,}  {r['exact_hit_us']:>8.1f}us  {r['semantic_lookup_us'] / 1000:>8.2f}ms  "
            f"{r['embedding_us'] / 1000:>8.2f}ms  {r['native_scan_us']:>8.1f}us  {r['memory_bytes_per_entry']:>8.0f}"
        )
    return 0


def _size(text: str) -> int:
    text = text.strip().lower()
    try:
        value = int(float(text.rstrip("km")) * {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must look like 10k, 100k or 1M, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return value


def _sizes(text: str) -> str:
    for part in text.split(","):
        _size(part)
    return text


def _eval(args: argparse.Namespace) -> int:
    from bsc.demo import load_pairs
    from bsc.quality import evaluate
    from bsc_backends import LocalEmbedder

    pairs, name = load_pairs(args.data, limit=args.limit)
    bits = tuple(_bits(b) for b in args.bits.split(","))
    report = evaluate(
        pairs,
        LocalEmbedder(),
        code_bits=bits,
        target_false_hit_rate=args.target,
        rescore_margin=args.rescore_margin,
        replay_threshold=args.replay,
        plot_path=args.plot,
        embeddings_cache=args.embeddings_cache,
        progress=not args.json and not args.no_progress,
    )
    report = {"data": name, **report}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['pairs']} pairs ({report['duplicates']} duplicates) from {name}, {report['embedder']}")
    print(f"{'scoring':<16} {'best F1':>8} {'P@R0.5':>8} {'AUC':>7}   calibrated for {args.target:.1%} false hits")
    for scoring, row in report["scoring"].items():
        cal = row["calibration"]
        print(
            f"{scoring:<16} {row['best_f1']:>8.4f} {row['precision_at_recall_0.5']:>8.4f} {row['auc']:>7.4f}   "
            f"threshold {cal['threshold']:.4f}: hit rate {cal['hit_rate']:.1%}, false hits {cal['false_hit_rate']:.2%} "
            f"(<= {cal['false_hit_rate_upper_bound']:.2%} at {cal['confidence']:.1%})"
            + ("" if cal["qualified"] else ": no threshold qualifies")
        )
    for row in report.get("replay", []):
        print(
            f"replay {row['code_bits']}-bit{' + rescore' if row['rescore'] else ''} at {row['similarity_threshold']}: "
            f"hit rate {row['hit_rate']:.1%}, wrong hits {row['wrong_hit_rate']:.1%}, recall {row['recall']:.1%}"
        )
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _threshold(text: str) -> float:
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [-1, 1], got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value}")
    return value


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _host(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.fullmatch(text):
            raise argparse.ArgumentTypeError(f"must be an IP address or a host name, got {text!r}") from None
    return text


def _bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]i?[bB]?|[bB])?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"must be a size such as 4MiB, 512KiB or 1000000, got {text!r}")
    unit = (match.group(2) or "b")[0].lower()
    value = int(match.group(1)) * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def _token(text: str) -> str:
    if text != "env" and (len(text) < 16 or not text.isascii() or not text.isprintable() or " " in text):
        raise argparse.ArgumentTypeError("must be at least 16 printable ASCII characters (or 'env': $BSC_ADMIN_TOKEN)")
    return text


def _bits(text: str) -> int:
    value = int(text)
    if value < 64 or value > 4096 or value % 64:
        raise argparse.ArgumentTypeError(f"must be a multiple of 64 from 64 to 4096, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bsc", description="Binary semantic cache for LLM applications.")
    top.add_argument("--version", action="version", version=f"bsc {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="replay real questions through a cache, offline, and report hits, false hits and speed",
        description="Replay labelled question pairs (QQP) through a BinarySemanticCache with the local "
        "embedder (all-MiniLM-L6-v2, no network, no API key): every first phrasing is stored with a "
        "stand-in answer, then every second phrasing is asked. Prints entries, hit rate, correct and "
        "false hits, LLM calls saved, lookup latency and memory per entry.",
    )
    demo.add_argument(
        "--data",
        metavar="PATH",
        help="QQP-style .jsonl or .jsonl.gz file (default: the shipped "
        "400-pair sample), e.g. ../shared/data/qqp/dev.jsonl.gz",
    )
    demo.add_argument("--limit", type=_positive, metavar="N", help="replay only the first N pairs")
    demo.add_argument("--threshold", type=_threshold, default=0.80, help="similarity threshold (default 0.80)")
    demo.add_argument("--code-bits", type=_bits, default=256, help="binary code length (default 256)")
    demo.add_argument(
        "--old-defaults",
        action="store_true",
        help="the codes alone decide (no rescoring, no content gate), as the original system did",
    )
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    stats = commands.add_parser(
        "stats",
        help="print the counters and settings of a saved cache",
        description="Print the size, hits (exact and semantic), misses, near misses, false-hit reports, "
        "evictions, expirations, tokens and cost saved, memory and settings of a cache file written by "
        "SemanticCache.save or BinarySemanticCache.save. Nothing is embedded; responses are not read.",
    )
    stats.add_argument("path", metavar="PATH", help="a cache file")
    stats.add_argument("--json", action="store_true", help="print the report as JSON")
    stats.set_defaults(run=_stats)
    checks = commands.add_parser(
        "checks",
        help="export the labelled pairs a self-checking cache collected",
        description="Write the comparisons a SemanticCache(self_check=...) saved in its file as JSON lines "
        "(id, text_a = the stored prompt, text_b = the asked prompt, label = 1 for the same answer, similarity, "
        "namespace, paid, time): the labelled-pairs format bsc eval reads. Nothing is embedded.",
    )
    checks.add_argument("path", metavar="PATH", help="a cache file")
    checks.add_argument("--out", metavar="FILE", help="write to FILE (default: standard output)")
    checks.set_defaults(run=_checks)
    inspect = commands.add_parser(
        "inspect",
        help="list the entries of a saved cache",
        description="List the entries of a cache file, most recently used first: id, namespace, uses, "
        "expiry, the stored prompt (SemanticCache) and the response.",
    )
    inspect.add_argument("path", metavar="PATH", help="a cache file")
    inspect.add_argument("--namespace", help="only this namespace")
    inspect.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most N entries (default 50)")
    inspect.add_argument("--json", action="store_true", help="print the entries as JSON")
    inspect.set_defaults(run=_inspect)
    evaluation = commands.add_parser(
        "eval",
        help="measure answer quality on labelled pairs: float cosine and binary codes side by side",
        description="Embed labelled question pairs with the local embedder and report, for exact float "
        "cosine, its int8 copy and each code length alone, with rescoring and with the content gate: best "
        "F1, precision at recall 0.5, AUC, and the threshold calibrated for a target false-hit rate (with "
        "its upper bound and the hit rate it buys); optionally a workload replay through SemanticCache and "
        "a plot. docs/QUALITY.md explains the metrics.",
    )
    evaluation.add_argument("--data", metavar="PATH", help="QQP-style .jsonl(.gz) (default: the shipped sample)")
    evaluation.add_argument("--limit", type=_positive, metavar="N", help="only the first N pairs")
    evaluation.add_argument("--bits", default="256", help="code lengths, e.g. 128,256,512,1024 (default 256)")
    evaluation.add_argument("--target", type=_rate, default=0.02, help="target false-hit rate (default 0.02)")
    evaluation.add_argument(
        "--rescore-margin", type=float, default=0.1, help="rescoring's margin under the threshold (default 0.1)"
    )
    evaluation.add_argument(
        "--replay", type=_threshold, metavar="THRESHOLD", help="also replay the pairs through SemanticCache at it"
    )
    evaluation.add_argument("--plot", metavar="FILE.png", help="also plot precision against hit rate (bsc[eval])")
    evaluation.add_argument("--embeddings-cache", metavar="FILE.npz", help="reuse (or save) the embeddings here")
    evaluation.add_argument("--out", metavar="PATH", help="also write the report as JSON here")
    evaluation.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluation.set_defaults(run=_eval)
    bench = commands.add_parser(
        "bench",
        help="time SemanticCache lookups (exact and semantic path) on this machine",
        description="Time SemanticCache lookups with the local embedder: the shipped QQP sample's first "
        "questions are stored, the cache is filled to each size with filler entries, and each series "
        "(exact hit, semantic lookup, embedding alone, native scan alone, exact-path miss, alookup) is "
        "timed; medians. The full benchmark with JSON and machine info: benchmarks/semantic.py.",
    )
    bench.add_argument("--sizes", type=_sizes, default="10k,100k", help="entries, e.g. 10k,100k,1M (default 10k,100k)")
    bench.add_argument("--rounds", type=_positive, default=1, help="passes over the pairs per series (default 1)")
    bench.add_argument("--pairs", type=_positive, default=400, help="question pairs used (default all 400)")
    bench.add_argument("--json", action="store_true", help="print the rows as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=_bench)
    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible caching proxy",
        description="Serve /v1/chat/completions and /v1/responses (streamed or not) from a SemanticCache in "
        "front of an OpenAI-compatible upstream, /v1/embeddings from an exact-match cache, and pass every other "
        "/v1 route through; /healthz, /metrics (Prometheus) and, with --admin-token, /admin/. Point a client's "
        "base URL at http://HOST:PORT/v1. Needs bsc[server]; docs/PROXY.md.",
    )
    serve.add_argument(
        "--upstream", required=True, metavar="URL", help="upstream base URL, e.g. http://127.0.0.1:11434/v1"
    )
    serve.add_argument("--host", type=_host, default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port, 1-65535 (default 8080)")
    serve.add_argument("--persist", metavar="PATH", help="cache file: loaded at start, saved in the background")
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="share the cache through Redis (redis:// or rediss://, ?prefix=NAME): every process and worker naming "
        "it shares one cache (bsc[redis]; docs/SHARED.md)",
    )
    serve.add_argument(
        "--workers", type=_positive, default=1, metavar="N", help="worker processes (N > 1 needs --redis; default 1)"
    )
    serve.add_argument("--threshold", type=_threshold, default=0.80, help="similarity threshold (default 0.80)")
    serve.add_argument("--max-entries", type=_positive, default=100_000, help="entries kept (default 100000)")
    serve.add_argument("--ttl", type=_seconds, help="seconds an answer lives (default: forever; X-Bsc-TTL per request)")
    serve.add_argument("--max-temperature", type=float, default=1.0, help="higher temperatures bypass (default 1.0)")
    serve.add_argument("--timeout", type=_seconds, default=600.0, help="upstream timeout in seconds (default 600)")
    serve.add_argument(
        "--shared-namespaces",
        nargs="?",
        const="*",
        metavar="NAMES",
        help="X-Bsc-Namespace names shared across API keys: every name (the flag alone) or a comma-separated "
        "list; other names, and requests without the header, stay within the caller's key (docs/PROXY.md)",
    )
    serve.add_argument(
        "--admin-token",
        type=_token,
        metavar="TOKEN",
        help="open the /admin/ routes to callers sending X-Bsc-Admin-Token: TOKEN ('env': read $BSC_ADMIN_TOKEN); "
        "closed without it",
    )
    serve.add_argument(
        "--max-body",
        type=_bytes,
        default=4 * 1024 * 1024,
        metavar="SIZE",
        help="largest request body read on the cached routes, e.g. 4MiB (default 4MiB; larger: 413)",
    )
    serve.add_argument(
        "--body-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="seconds a request body may stall before a 408 (default 5)",
    )
    serve.add_argument(
        "--no-embeddings-cache", action="store_true", help="pass /v1/embeddings through without caching its answers"
    )
    serve.add_argument(
        "--allow-lax-threshold",
        action="store_true",
        help="let X-Bsc-Threshold be laxer than --threshold (default: only stricter)",
    )
    serve.add_argument(
        "--rescore",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-score candidates with an int8 copy of each embedding (default on; QUALITY.md)",
    )
    serve.add_argument(
        "--content-gate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="veto semantic hits whose numbers, dates, negation, ... conflict with the prompt's (default on; "
        "docs/SEMANTICS.md)",
    )
    serve.add_argument(
        "--self-check",
        type=float,
        default=None,
        metavar="TARGET",
        help="check hits near the threshold against fresh answers and learn each namespace's threshold toward "
        "this wrong-answer rate, e.g. 0.1 (default off: checks cost upstream calls; docs/QUALITY.md)",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(run=_serve)
    return top


def _self_check(target: float | None) -> float | None:
    if target is not None and not 0 < target < 1:
        raise ValueError(f"--self-check must be a wrong-answer rate between 0 and 1, e.g. 0.1; got {target}")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (OSError, EOFError, ValueError, ImportError, BscError) as exc:  # bad or missing data; a missing extra
        print(f"bsc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
