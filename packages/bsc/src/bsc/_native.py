"""Imports bsc_native and refuses to run against a release other than the one bsc pins.

Two releases of the engine may differ in entry layout or behaviour; mixing them gives wrong
answers, not errors, so the check is strict (as polars does between its facade and runtime).
"""

from __future__ import annotations

import bsc_native
from bsc._version import NATIVE_VERSION, __version__


def check_native_version(found: str) -> None:
    if found != NATIVE_VERSION:
        raise ImportError(
            f"bsc {__version__} requires bsc-native=={NATIVE_VERSION}, but bsc-native {found} is installed "
            f"(at {bsc_native.__file__}); install the matching release: pip install 'bsc-native=={NATIVE_VERSION}'"
        )


check_native_version(bsc_native.__version__)
