"""The Python examples in the READMEs run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
READMES = [ROOT / "README.md", *sorted((ROOT / "packages").glob("*/README.md"))]
BLOCKS = [
    pytest.param(block, id=f"{path.relative_to(ROOT)}#{i}")
    for path in READMES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


def test_readmes_have_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS)
def test_readme_example_runs(block):
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "<readme>", "exec"), {})
