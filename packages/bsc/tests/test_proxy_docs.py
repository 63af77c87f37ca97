"""docs/PROXY.md's admin examples run as written against a real proxy, and the README gives a
pip and a uv command for every extra it mentions."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from bsc import SemanticCache
from bsc.server import create_app
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "change-me-to-a-long-random-string"


def _curl_lines() -> list[list[str]]:
    text = (ROOT / "docs" / "PROXY.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.split("  #")[0] for block in blocks for line in block.splitlines() if line.startswith("curl ")]
    return [shlex.split(line) for line in lines]


def test_the_admin_curl_examples_run() -> None:
    commands = _curl_lines()
    assert len(commands) >= 6
    fake = FakeChatUpstream()
    cache = SemanticCache(WordEmbedder())
    with ServerThread(fake.app) as up, ServerThread(create_app(cache, up.url + "/v1", admin_token=TOKEN)) as proxy:
        stored = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
            headers={"X-Bsc-Namespace": "team-a", "X-Bsc-Tags": "pricing"},
        )
        assert stored.status_code == 200 and len(cache) == 1
        seen = set()
        for argv in commands:
            method = argv[argv.index("-X") + 1] if "-X" in argv else "GET"
            url = next(a for a in argv if a.startswith("http://127.0.0.1:8080/"))
            path = url.removeprefix("http://127.0.0.1:8080")
            assert "-H" in argv and argv[argv.index("-H") + 1] == "$T"
            response = httpx.request(method, proxy.url + path, headers={"X-Bsc-Admin-Token": TOKEN})
            body = response.json()
            if response.status_code == 404:  # an example id that this cache does not hold
                assert body["error"]["code"] == "entry_not_found", (path, body)
            else:
                assert response.status_code == 200, (path, body)
            seen.add(path.split("/")[2])
            # Without the token every example is refused.
            assert httpx.request(method, proxy.url + path).status_code == 401
        assert seen == {"stats", "entries", "namespaces", "tags", "flush"}
    assert len(cache) == 0  # the examples end with a flush


def test_every_extra_the_readme_mentions_has_pip_and_uv_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    extras = set(re.findall(r"(bsc(?:-backends)?)\[([a-z-]+)\]", readme))
    assert ("bsc", "server") in extras and ("bsc-backends", "ollama") in extras
    for package, extra in sorted(extras):
        assert f'pip install "{package}[{extra}]"' in readme, (package, extra)
        assert f'uv add "{package}[{extra}]"' in readme, (package, extra)
        assert f"uv sync --all-packages --extra {extra}`" in readme, (package, extra)


def test_the_client_wrapper_without_its_extra_names_the_install_commands() -> None:
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'openai' or name.startswith('openai.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import bsc.openai\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'pip install "bsc[openai]"' in done.stdout and 'uv add "bsc[openai]"' in done.stdout
