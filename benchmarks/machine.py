"""Machine facts recorded beside every benchmark result."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions(packages: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(packages: list[str] | None = None) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and package versions, and the time of the run (UTC)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "cpu": _cpu_model(),
        "cores_available": cores,
        "memory_bytes": memory,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": _versions(packages or ["bsc", "bsc-native", "bsc-encoder", "bsc-backends", "numpy"]),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    """Writes ``{"machine": machine_info(), "results": rows}`` to ``out`` and says so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "results": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
