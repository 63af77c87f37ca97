"""Responses as bytes: the encoding the native store keeps, without pickle.

A response is ``str``, ``bytes`` or a JSON value (``dict`` with ``str`` keys, ``list``,
``str``, ``int``, finite ``float``, ``bool``, ``None``). The stored form is one tag byte and a
body: ``s`` + UTF-8 text, ``b`` + raw bytes, ``j`` + UTF-8 JSON. Decoding never executes code.
"""

from __future__ import annotations

import json
import math
from typing import Any

TAG_STR = b"s"
TAG_BYTES = b"b"
TAG_JSON = b"j"
_MAX_DEPTH = 200
_ALLOWED = "str, bytes, or JSON values (dict with str keys, list, str, int, finite float, bool, None)"


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"{path} is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value!r}: JSON has no NaN or infinity")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a key of type {type(key).__name__} ({key!r}); JSON keys must be str")
            _check_json(item, f"{path}[{key!r}]", depth + 1)
        return
    raise TypeError(f"{path} has type {type(value).__name__}; a response must be {_ALLOWED}")


def encode_response(value: Any) -> bytes:
    """Encode a response, or raise ``TypeError``/``ValueError`` saying what is not allowed."""
    if isinstance(value, str):
        return TAG_STR + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return TAG_BYTES + value
    _check_json(value, "response", 0)
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return TAG_JSON + text.encode("utf-8", "surrogatepass")


def decode_response(data: bytes) -> Any:
    """Decode what :func:`encode_response` made."""
    tag, body = data[:1], data[1:]
    if tag == TAG_STR:
        return body.decode("utf-8", "surrogatepass")
    if tag == TAG_BYTES:
        return bytes(body)
    if tag == TAG_JSON:
        return json.loads(body.decode("utf-8", "surrogatepass"))
    raise ValueError(f"stored response has unknown tag {tag!r}")
