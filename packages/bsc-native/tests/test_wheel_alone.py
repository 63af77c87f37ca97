"""The bsc-native wheel alone, in a fresh virtual environment, gives raw binary-code search."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import numpy as np, bsc_native
index = bsc_native.BinaryIndex(code_bits=256)
codes = np.random.default_rng(0).integers(0, 2**64, size=(1000, 4), dtype=np.uint64)
ids = index.add(codes)
found, dist = index.search(codes[123], k=3)
assert found[0] == ids[123] and dist[0] == 0, (found, dist)
import importlib.util
assert importlib.util.find_spec("bsc") is None and importlib.util.find_spec("bsc_encoder") is None
print("raw search ok", bsc_native.__version__)
"""


@pytest.mark.dist
def test_native_wheel_alone_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = os.environ.get("BSC_DIST")
    assert dist, "set BSC_DIST to the folder of built wheels (the nox 'wheels' session does)"
    wheels = sorted(Path(dist).glob("bsc_native-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "-p", str(python), str(wheels[0])], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheels[0])], check=True)
    result = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("raw search ok")
