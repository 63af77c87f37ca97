"""The proxy's trust model as an exhaustive matrix, and its admin surface.

A request's space (docs/PROXY.md): ``key-<sha256 of its Authorization or api-key header>[:24]``
without ``X-Bsc-Namespace`` (``anonymous`` without a key); ``shared:<name>`` for a name the
operator declared shared; ``<key space>:<name>`` for any other name. The rule asserted here: a
caller is answered from an entry iff the entry was stored in exactly the same space. Every
caller (4 API-key setups x 7 namespace headers) seeds an entry in each sharing mode, and every
caller then asks its exact prompt and a paraphrase. The expected space is computed here from
the rule, never by the proxy's own functions.

The probes carry ``X-Probe: 1``, which the upstream answers with a 503: a probe that misses
stores nothing, so it cannot shadow a leak (or a hit) of a later probe.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse

from bsc import SemanticCache
from bsc.cli import main as cli_main
from bsc.server import create_app
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

KEY_A = "sk-alpha-secret-key-0001"
KEY_B = "sk-bravo-secret-key-0002"
SPACE_A = "key-" + hashlib.sha256(("Bearer " + KEY_A).encode()).hexdigest()[:24]

#: The callers' API-key setups: A, B, no key, and A's key sent as ``api-key`` (a different value).
KEYS: dict[str, dict[str, str]] = {
    "A": {"Authorization": f"Bearer {KEY_A}"},
    "B": {"Authorization": f"Bearer {KEY_B}"},
    "none": {},
    "A-api-key": {"api-key": KEY_A},
}
#: The X-Bsc-Namespace headers (None: absent), including names that try to reach other spaces.
NAMESPACES: list[str | None] = [None, "team-a", "team-b", "anonymous", "shared:team-a", SPACE_A, SPACE_A + ":team-a"]
CALLERS = [(key, ns) for key in KEYS for ns in NAMESPACES]
MODES: dict[str, bool | list[str]] = {"per-key": False, "all-shared": True, "list": ["team-a"]}

ADMIN_TOKEN = "admin-token-0123456789abcdef"
Q = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"


def key_space(key: str) -> str:
    headers = KEYS[key]
    value = headers.get("Authorization") or headers.get("api-key")
    return "key-" + hashlib.sha256(value.encode()).hexdigest()[:24] if value else "anonymous"


def expected_space(key: str, namespace: str | None, mode: bool | list[str]) -> str:
    """The space of a caller, from the rule of the trust model."""
    own = key_space(key)
    if namespace is None:
        return own
    shared = mode is True or (isinstance(mode, list) and namespace in mode)
    return f"shared:{namespace}" if shared else f"{own}:{namespace}"


def caller_headers(key: str, namespace: str | None, **extra: str) -> dict[str, str]:
    headers = dict(KEYS[key])
    if namespace is not None:
        headers["X-Bsc-Namespace"] = namespace
    return {**headers, **extra}


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def content(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    if code is not None:
        assert error["code"] == code, error


def stored_namespaces(cache: SemanticCache) -> set[str]:
    """The namespaces of the stored entries (the engine's partitions are ``<namespace>#<scope>``)."""
    return {name.decode().split("#", 1)[0] for name in cache.binary.engine.namespaces()}


class ProbeRefusingUpstream:
    """The fake upstream, answering requests marked ``X-Probe`` with a 503 (never cached)."""

    def __init__(self, fake: FakeChatUpstream) -> None:
        self.fake = fake

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(name == b"x-probe" for name, _ in scope["headers"]):
            error = {"error": {"message": "probe", "type": "server_error", "code": "probe"}}
            await JSONResponse(error, 503)(scope, receive, send)
            return
        await self.fake.app(scope, receive, send)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeChatUpstream, str]]:
    fake = FakeChatUpstream()
    with ServerThread(ProbeRefusingUpstream(fake)) as server:
        yield fake, server.url + "/v1"


def proxy_for(upstream: tuple[FakeChatUpstream, str], **kwargs: Any) -> tuple[ServerThread, SemanticCache]:
    cache = SemanticCache(WordEmbedder(), similarity_threshold=0.8)
    return ServerThread(create_app(cache, upstream[1], timeout=10.0, **kwargs)), cache


# -- the matrix -------------------------------------------------------------------------------


def seed_prompts(n: int) -> tuple[str, str]:
    """A prompt of words no other seed has, and a paraphrase of it (one word more)."""
    words = " ".join(f"{w}{n}" for w in ("zephyr", "quartz", "lumen", "orbit", "cobalt", "tundra"))
    return f"Explain {words} please", f"Explain {words} now please"


@pytest.mark.parametrize("mode_name", list(MODES))
def test_a_caller_is_answered_only_from_its_own_space(
    mode_name: str, upstream: tuple[FakeChatUpstream, str], tmp_path: Path
) -> None:
    mode = MODES[mode_name]
    server, cache = proxy_for(upstream, shared_namespaces=mode)
    failures: list[str] = []
    seeded: set[str] = set()
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        for n, (seed_key, seed_ns) in enumerate(CALLERS):
            prompt, paraphrase = seed_prompts(n + 100 * list(MODES).index(mode_name))
            seed_space = expected_space(seed_key, seed_ns, mode)
            seeded.add(seed_space)
            stored = http.post("/v1/chat/completions", json=chat(prompt), headers=caller_headers(seed_key, seed_ns))
            assert stored.status_code == 200 and stored.headers["x-bsc-cache"] == "miss", stored.text
            answer = content(stored)
            assert answer.endswith(prompt)
            entry_ids: set[str] = set()
            for key, ns in CALLERS:
                want_hit = expected_space(key, ns, mode) == seed_space
                for asked in (prompt, paraphrase):
                    got = http.post(
                        "/v1/chat/completions", json=chat(asked), headers=caller_headers(key, ns, **{"X-Probe": "1"})
                    )
                    state = got.headers.get("x-bsc-cache")
                    where = f"seed {seed_key}/{seed_ns} ({seed_space}), caller {key}/{ns}, {asked!r}"
                    if want_hit:
                        if got.status_code != 200 or state != "hit" or content(got) != answer:
                            failures.append(f"expected a hit: {where}: {got.status_code} {state}")
                        else:
                            entry_ids.add(got.headers["x-bsc-entry"])
                    elif got.status_code != 503 or state != "miss":
                        failures.append(f"LEAK, expected a miss: {where}: {got.status_code} {state} {got.text[:80]}")
            assert len(entry_ids) <= 1, f"hits from several entries for one seed: {entry_ids}"
        assert not failures, f"{len(failures)} violations of the trust model:\n" + "\n".join(failures[:40])
        # Every entry lives in the space the rule names, and no space name holds the key text.
        names = stored_namespaces(cache)
        assert names == seeded
        assert not any(KEY_A in name or KEY_B in name for name in names)
        cache.save(tmp_path / "matrix.bsc")
        saved = (tmp_path / "matrix.bsc").read_bytes()
        assert KEY_A.encode() not in saved and KEY_B.encode() not in saved
        assert len(cache) == len(CALLERS)
        assert http.get("/healthz").json()["entries"] == len(CALLERS)


def test_the_matrix_has_the_spaces_it_should() -> None:
    """The matrix is meaningful: the modes do change spaces, and A's two ways of sending its key differ."""
    spaces = {mode: {expected_space(k, ns, m) for k, ns in CALLERS} for mode, m in MODES.items()}
    assert len(spaces["per-key"]) == len(CALLERS)  # no two callers share a space
    assert len(spaces["all-shared"]) == 4 + len(NAMESPACES) - 1  # 4 key spaces + one per name
    assert "shared:team-a" in spaces["list"] and "shared:team-b" not in spaces["list"]
    assert key_space("A") == SPACE_A != key_space("A-api-key")


def test_a_list_of_shared_names_leaves_other_names_per_key(upstream: tuple[FakeChatUpstream, str]) -> None:
    server, cache = proxy_for(upstream, shared_namespaces=["team-a"])
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        for ns in ("team-a", "team-b"):
            first = http.post("/v1/chat/completions", json=chat(Q), headers=caller_headers("A", ns))
            assert first.headers["x-bsc-cache"] == "miss"
            other = http.post("/v1/chat/completions", json=chat(Q), headers=caller_headers("B", ns, **{"X-Probe": "1"}))
            assert other.headers["x-bsc-cache"] == ("hit" if ns == "team-a" else "miss")
        assert stored_namespaces(cache) == {"shared:team-a", f"{SPACE_A}:team-b"}


def test_the_cli_flag_with_a_list_shares_only_those_names(
    upstream: tuple[FakeChatUpstream, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bsc serve --shared-namespaces team-a``: the app it builds shares team-a, not team-b."""
    import bsc.cli
    import bsc.semantic

    real = bsc.semantic.SemanticCache
    seen: dict[str, Any] = {}

    def small_cache(**kwargs: Any) -> SemanticCache:
        kwargs.pop("persist_path", None)
        return real(WordEmbedder(), **kwargs)

    class Server:
        def __init__(self, config: Any) -> None:
            self.app = config.app

        def run(self) -> None:
            with ServerThread(self.app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
                for ns in ("team-a", "team-b"):
                    http.post("/v1/chat/completions", json=chat(Q), headers=caller_headers("A", ns))
                    probe = caller_headers("B", ns, **{"X-Probe": "1"})
                    seen[ns] = http.post("/v1/chat/completions", json=chat(Q), headers=probe).headers["x-bsc-cache"]

    monkeypatch.setattr(bsc.semantic, "SemanticCache", small_cache)
    monkeypatch.setattr(bsc.cli, "_Server", Server)
    argv = ["serve", "--upstream", upstream[1], "--shared-namespaces", "team-a", "--log-level", "warning"]
    assert cli_main(argv) == 0
    assert seen == {"team-a": "hit", "team-b": "miss"}


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("bad space", "invalid_namespace"),
        ("", "invalid_namespace"),
        ("-leading-dash", "invalid_namespace"),
        ("a#b", "invalid_namespace"),
        ("x" * 129, "invalid_namespace"),
        ("n" * 100, "invalid_namespace"),  # valid alone, too long once put in the key's space
        ("caf\u00e9".encode(), "invalid_header"),
    ],
)
def test_invalid_namespace_headers_are_400s_in_the_openai_format(
    value: str | bytes, code: str, upstream: tuple[FakeChatUpstream, str]
) -> None:
    server, cache = proxy_for(upstream)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        for route, body in (("/v1/chat/completions", chat(Q)), ("/v1/responses", {"model": "m", "input": Q})):
            got = http.post(route, json=body, headers={**KEYS["A"], "X-Bsc-Namespace": value})  # type: ignore[dict-item]
            assert_openai_error(got, 400, code)
        embed = {"model": "e", "input": "x"}
        got = http.post("/v1/embeddings", json=embed, headers={**KEYS["A"], "X-Bsc-Namespace": value})  # type: ignore[dict-item]
        assert_openai_error(got, 400, code)
    assert len(cache) == 0


# -- the admin surface ------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/admin/stats"),
    ("POST", "/admin/entries/1/wrong"),
    ("DELETE", "/admin/entries/1"),
    ("DELETE", "/admin/namespaces/x"),
    ("DELETE", "/admin/tags/t"),
    ("POST", "/admin/flush"),
]


def test_without_an_admin_token_the_admin_routes_do_not_exist(upstream: tuple[FakeChatUpstream, str]) -> None:
    server, cache = proxy_for(upstream)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        http.post("/v1/chat/completions", json=chat(Q), headers=KEYS["A"])
        for method, path in ADMIN_ROUTES:
            for headers in ({}, KEYS["A"], {**KEYS["A"], "X-Bsc-Admin-Token": ADMIN_TOKEN}):
                assert_openai_error(http.request(method, path, headers=headers), 404, "not_found")
    assert len(cache) == 1


@pytest.fixture
def admin(upstream: tuple[FakeChatUpstream, str]) -> Iterator[tuple[httpx.Client, SemanticCache]]:
    server, cache = proxy_for(upstream, admin_token=ADMIN_TOKEN)
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http, cache


OPEN = {"X-Bsc-Admin-Token": ADMIN_TOKEN}


def test_the_admin_routes_need_the_admin_token_header(
    admin: tuple[httpx.Client, SemanticCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, cache = admin
    http.post("/v1/chat/completions", json=chat(Q), headers=KEYS["A"])
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("bsc.server.hmac.compare_digest", spy)
    refused = [
        {},
        {"X-Bsc-Admin-Token": "wrong-token-0123456789abcdef"},
        {"X-Bsc-Admin-Token": ADMIN_TOKEN[:-1]},
        {"X-Bsc-Admin-Token": ADMIN_TOKEN + "x"},
        {"X-Bsc-Admin-Token": ""},
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        {"api-key": ADMIN_TOKEN},
        {"Authorization": f"Bearer {ADMIN_TOKEN}", "api-key": ADMIN_TOKEN},
    ]
    for method, path in ADMIN_ROUTES:
        for headers in refused:
            got = http.request(method, path, headers=headers)
            assert_openai_error(got, 401, "invalid_admin_token")
            assert got.json()["error"]["type"] == "authentication_error"
    assert len(cache) == 1  # nothing was deleted
    assert (b"wrong-token-0123456789abcdef", ADMIN_TOKEN.encode()) in compared  # constant time
    compared.clear()
    assert http.get("/admin/stats", headers=OPEN).status_code == 200
    assert compared == [(ADMIN_TOKEN.encode(), ADMIN_TOKEN.encode())]


def test_admin_stats_match_the_cache(admin: tuple[httpx.Client, SemanticCache]) -> None:
    http, cache = admin
    http.post("/v1/chat/completions", json=chat(Q), headers=KEYS["A"])
    http.post("/v1/chat/completions", json=chat(PARAPHRASE), headers=KEYS["A"])
    http.post("/v1/embeddings", json={"model": "e", "input": "abc"}, headers=KEYS["A"])
    got = http.get("/admin/stats", headers=OPEN)
    assert got.status_code == 200
    body = got.json()
    stats = cache.stats().as_dict()
    assert {k: body[k] for k in stats} == json.loads(json.dumps(stats))
    assert body["size"] == 1 and body["hits"] == 1 and body["misses"] == 1
    assert body["embeddings_cached"] == 1 and body["embeddings_bytes"] > 0


def test_mark_wrong_by_the_entry_header_removes_the_entry(admin: tuple[httpx.Client, SemanticCache]) -> None:
    http, cache = admin
    http.post("/v1/chat/completions", json=chat(Q), headers=KEYS["A"])
    hit = http.post("/v1/chat/completions", json=chat(PARAPHRASE), headers=KEYS["A"])
    assert hit.headers["x-bsc-cache"] == "hit"
    entry = hit.headers["x-bsc-entry"]
    marked = http.post(f"/admin/entries/{entry}/wrong", headers=OPEN)
    assert marked.status_code == 200 and marked.json() == {"id": int(entry), "removed": True}
    assert len(cache) == 0 and cache.stats().false_hit_reports == 1
    again = http.post("/v1/chat/completions", json=chat(PARAPHRASE), headers={**KEYS["A"], "X-Probe": "1"})
    assert again.headers["x-bsc-cache"] == "miss"
    assert_openai_error(http.post(f"/admin/entries/{entry}/wrong", headers=OPEN), 404, "entry_not_found")
    assert cache.stats().false_hit_reports == 1
    assert_openai_error(http.delete(f"/admin/entries/{entry}", headers=OPEN), 404, "entry_not_found")
    for bad in ("-1", "x", "99999999999999999999"):
        assert_openai_error(http.post(f"/admin/entries/{bad}/wrong", headers=OPEN), 400, "invalid_entry_id")


def test_admin_deletes_an_entry_a_namespace_a_tag_and_flushes(admin: tuple[httpx.Client, SemanticCache]) -> None:
    http, cache = admin

    def store(prompt: str, key: str, ns: str | None, **extra: str) -> None:
        got = http.post("/v1/chat/completions", json=chat(prompt), headers=caller_headers(key, ns, **extra))
        assert got.status_code == 200 and got.headers["x-bsc-cache"] == "miss"

    def hits(prompt: str, key: str, ns: str | None) -> bool:
        got = http.post("/v1/chat/completions", json=chat(prompt), headers=caller_headers(key, ns, **{"X-Probe": "1"}))
        return got.headers["x-bsc-cache"] == "hit"

    prompts = {n: seed_prompts(n)[0] for n in range(6)}
    store(prompts[0], "A", None)
    store(prompts[1], "A", "team-a")
    store(prompts[2], "B", "team-a")
    store(prompts[3], "A", None, **{"X-Bsc-Tags": "t1,t2"})
    store(prompts[4], "B", None, **{"X-Bsc-Tags": "t2"})
    store(prompts[5], "B", None, **{"X-Bsc-Tags": "t3"})
    assert len(cache) == 6
    # A namespace by its stored name: only A's team-a, not A's own space nor B's team-a.
    got = http.delete(f"/admin/namespaces/{SPACE_A}:team-a", headers=OPEN)
    assert got.status_code == 200 and got.json() == {"namespace": f"{SPACE_A}:team-a", "deleted": 1}
    assert not hits(prompts[1], "A", "team-a")
    assert hits(prompts[0], "A", None) and hits(prompts[2], "B", "team-a")
    assert http.delete("/admin/namespaces/nobody", headers=OPEN).json()["deleted"] == 0
    assert_openai_error(http.delete("/admin/namespaces/bad%20name", headers=OPEN), 400, "invalid_namespace")
    # A tag: every entry with it, across keys, and no other.
    got = http.delete("/admin/tags/t2", headers=OPEN)
    assert got.status_code == 200 and got.json() == {"tag": "t2", "deleted": 2}
    assert not hits(prompts[3], "A", None) and not hits(prompts[4], "B", None)
    assert hits(prompts[5], "B", None) and hits(prompts[0], "A", None)
    assert http.delete("/admin/tags/t1", headers=OPEN).json()["deleted"] == 0  # its entry went with t2
    assert len(cache) == 3
    # One entry by id.
    entry = http.post("/v1/chat/completions", json=chat(prompts[5]), headers=KEYS["B"]).headers["x-bsc-entry"]
    assert http.delete(f"/admin/entries/{entry}", headers=OPEN).json() == {"id": int(entry), "removed": True}
    assert not hits(prompts[5], "B", None) and len(cache) == 2
    assert cache.stats().false_hit_reports == 0  # a delete is not a false-hit report
    # Flush: everything.
    got = http.post("/admin/flush", headers=OPEN)
    assert got.status_code == 200 and got.json() == {"deleted": 2}
    assert len(cache) == 0 and not hits(prompts[0], "A", None) and not hits(prompts[2], "B", "team-a")
    assert http.get("/admin/stats", headers=OPEN).json()["size"] == 0


@pytest.mark.parametrize("token", ["", "short", "x" * 15, "caf\u00e9-token-0123456789", 12345])
def test_create_app_refuses_a_weak_admin_token(token: Any) -> None:
    with pytest.raises(ValueError, match="admin_token"):
        create_app(SemanticCache(WordEmbedder()), "http://127.0.0.1:1/v1", admin_token=token)
    create_app(SemanticCache(WordEmbedder()), "http://127.0.0.1:1/v1", admin_token="x" * 16)


@pytest.mark.parametrize("field", ["namespace", "prompt", "response", "scope"])
def test_a_request_body_cannot_choose_where_its_answer_is_stored(
    field: str, upstream: tuple[FakeChatUpstream, str]
) -> None:
    """Body keys are scope values of the request, never arguments of the store: B's request with
    ``"namespace": <A's space>`` is stored in B's own space, under B's scope, and A is never
    answered from it (a store that took scope values as keywords let such a key pick the
    entry's namespace)."""
    server, cache = proxy_for(upstream, shared_namespaces=True)
    prompt = f"Which river flows through {field} town?"
    body = {**chat(prompt), field: SPACE_A}
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        seeded = http.post("/v1/chat/completions", json=body, headers=caller_headers("B", None))
        assert seeded.status_code == 200 and seeded.headers["x-bsc-cache"] == "miss", seeded.text
        assert stored_namespaces(cache) == {key_space("B")}  # stored, and in B's space
        again = http.post("/v1/chat/completions", json=body, headers=caller_headers("B", None, **{"X-Probe": "1"}))
        assert again.headers["x-bsc-cache"] == "hit"  # the same request is answered from it
        for headers in (caller_headers("A", None), caller_headers("A", "team-a")):
            probe = http.post("/v1/chat/completions", json=chat(prompt), headers={**headers, "X-Probe": "1"})
            assert probe.status_code == 503 and probe.headers["x-bsc-cache"] == "miss"
        plain = http.post(
            "/v1/chat/completions", json=chat(prompt), headers=caller_headers("B", None, **{"X-Probe": "1"})
        )
        assert plain.headers["x-bsc-cache"] == "miss"  # other parameters, another scope
