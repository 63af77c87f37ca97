# /// script
# requires-python = ">=3.10"
# dependencies = ["nox==2026.10.20"]
# ///
"""Test and lint sessions for the bsc workspace.

Run everything with ``uv run noxfile.py`` (the README's test command); one session with
``uv run noxfile.py -s tests_bsc-3.12``; list them with ``uv run noxfile.py --list``.

The ``build`` session runs ``uv build --all-packages`` once: an sdist and a wheel of every
package in ``dist/``, the native wheel release-built for abi3 (CPython >= 3.10). Every test
session installs that one native wheel; the pure packages are installed editable, except in
``wheels``, which installs every built wheel and runs all suites against them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
DIST = ROOT / "dist"
REPORTS = ROOT / ".nox" / "reports"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
PURE = {"encoder": "bsc-encoder", "backends": "bsc-backends", "bsc": "bsc"}
# Test environments install every optional backend, so no backend test can be skipped.
EXTRAS = {"bsc-backends": "[all]", "bsc": "[all]"}
TEST_DEPS = ["pytest==9.2.0", "hypothesis==6.168.5"]
LINT_DEPS = ["ruff==0.17.6", "mypy==2.4.1"]

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True
nox.options.reuse_venv = "yes"

# Interpreters come from the machine, never from a download (the registries are all we reach).
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
# One cargo target directory for every build of the native crate, so `uv build` from the sdist
# reuses compiled dependencies instead of starting over in a temporary directory.
os.environ.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))


def _add_pyenv_interpreters() -> None:
    """Put pyenv's CPython 3.10-3.13 on PATH: its shims fail for versions that are not active."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not versions.is_dir():
        return
    found = []
    for wanted in PYTHONS:
        candidates = sorted(
            (p for p in versions.glob(f"{wanted}.*") if (p / "bin" / f"python{wanted}").exists()),
            key=lambda p: [int(part) if part.isdigit() else 0 for part in p.name.split(".")],
        )
        if candidates:
            found.append(str(candidates[-1] / "bin"))
    os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_add_pyenv_interpreters()


def _wheel(project: str) -> Path:
    name = project.replace("-", "_")
    wheels = sorted(DIST.glob(f"{name}-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one {name} wheel in {DIST}, found {len(wheels)}: run the 'build' session")
    return wheels[0]


def _native_and_editables() -> list[str]:
    """Install arguments: the built native wheel and the pure packages editable, in one resolve
    where the wheel satisfies the facade's == pin. ``--no-sources`` stops uv from swapping in
    the workspace's editable bsc-native (``[tool.uv.sources]``) for the wheel."""
    editable = [arg for name in PURE.values() for arg in ("-e", f"packages/{name}{EXTRAS.get(name, '')}")]
    return ["--no-sources", str(_wheel("bsc-native")), *editable]


def _junit(session: nox.Session) -> str:
    return f"--junitxml={REPORTS / (session.name + '.xml')}"


def _pytest(session: nox.Session, *paths: str) -> None:
    # pytest exits 5 when it collects nothing; nox fails the session on any non-zero code.
    session.run("python", "-m", "pytest", *paths, _junit(session), *session.posargs)


@nox.session(python=False)
def build(session: nox.Session) -> None:
    """An sdist and a wheel of every package into dist/ (the native wheel release-built, abi3)."""
    for folder in (DIST, REPORTS):
        if folder.exists():
            shutil.rmtree(folder)
    session.run("uv", "build", "--all-packages", "--out-dir", str(DIST), external=True)
    built = sorted(p.name for p in DIST.iterdir())
    for project in ["bsc_native", "bsc_encoder", "bsc_backends", "bsc"]:
        if not any(n.startswith(f"{project}-") and n.endswith(".whl") for n in built):
            session.error(f"no wheel for {project} in {built}")
        if not any(n.startswith(f"{project}-") and n.endswith(".tar.gz") for n in built):
            session.error(f"no sdist for {project} in {built}")
    session.log("built: " + ", ".join(built))


@nox.session(python=PYTHONS, requires=["build"])
def tests_native(session: nox.Session) -> None:
    """bsc-native's tests against the built abi3 wheel."""
    session.install(str(_wheel("bsc-native")), *TEST_DEPS)
    _pytest(session, "packages/bsc-native/tests", "-m", "not dist")


def _pure_session(package: str) -> None:
    project = PURE[package]

    @nox.session(name=f"tests_{package}", python=PYTHONS, requires=["build"])
    def run(session: nox.Session) -> None:
        session.install(*_native_and_editables(), *TEST_DEPS)
        _pytest(session, f"packages/{project}/tests")

    run.__doc__ = f"{project}'s tests (editable) with the built native wheel."


for _package in PURE:
    _pure_session(_package)


@nox.session(python=PYTHONS[-1], requires=["build"])
def wheels(session: nox.Session) -> None:
    """Every suite against the built wheels (no editable installs), plus the dist tests:
    bsc-native's wheel alone in a fresh virtual environment."""
    wheels = [f"{p}{EXTRAS.get(p, '')} @ {_wheel(p).as_uri()}" for p in ["bsc-native", *PURE.values()]]
    session.install(*wheels, *TEST_DEPS)
    tests = [f"packages/{p}/tests" for p in ["bsc-native", *PURE.values()]]
    # Run from outside the source tree so that `import bsc` can only find the installed wheel.
    with session.chdir(session.create_tmp()):
        session.run(
            "python", "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
            *(str(ROOT / t) for t in tests), _junit(session), *session.posargs,
            env={"BSC_DIST": str(DIST)},
        )  # fmt: skip


@nox.session(python=False)
def rust(session: nox.Session) -> None:
    """cargo fmt --check, clippy with -D warnings (with and without the binding), cargo test."""
    with session.chdir("packages/bsc-native"):
        session.run("cargo", "fmt", "--check", external=True)
        session.run("cargo", "clippy", "--all-targets", "--", "-D", "warnings", external=True)
        session.run("cargo", "clippy", "--all-targets", "--features", "python", "--", "-D", "warnings", external=True)
        session.run("cargo", "test", "--release", external=True)


@nox.session(python=PYTHONS[-1], requires=["build"])
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict over the Python sources and the native stub."""
    session.install(*_native_and_editables(), *LINT_DEPS, *TEST_DEPS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("python", "-m", "mypy.stubtest", "bsc_native._core")


@nox.session(python=False)
def summary(session: nox.Session) -> None:
    """One closing line for every pytest run of this invocation: 'N passed, N failed'."""
    import xml.etree.ElementTree as ET

    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    reports = sorted(REPORTS.glob("*.xml")) if REPORTS.is_dir() else []
    for report in reports:
        for suite in ET.parse(report).getroot().iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
    failed = totals["failures"] + totals["errors"]
    passed = totals["tests"] - failed - totals["skipped"]
    session.log(f"{len(reports)} pytest runs")
    print(f"{passed} passed, {failed} failed, {totals['skipped']} skipped", flush=True)
    if not reports or passed == 0:
        session.error("no test ran")
    if failed:
        session.error(f"{failed} tests failed")


if __name__ == "__main__":
    nox.main()
