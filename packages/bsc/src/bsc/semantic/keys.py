"""Keys and scope: what a prompt is matched as, and which entries it may be matched against.

A lookup's *partition* is its namespace, ``#`` and a hash of its scope values: the engine only
ever compares a prompt with entries of its partition. Its *key* is a 64-bit hash of the
partition and the normalised prompt, for the exact path. Also the checks of every text a caller
gives (prompt, namespace, tags) and :func:`chat_scope`, which splits a chat request into the
prompt matched semantically and the scope matched exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from bsc._checks import check_no_surrogate, check_ttl

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_TAGS",
    "NAMESPACE_PATTERN",
    "NEUTRAL_PARAMETERS",
    "RESERVED_SCOPE_NAMES",
    "TAG_PATTERN",
    "PromptKey",
    "bypasses",
    "canonical",
    "chat_scope",
    "check_entry_ttl",
    "check_namespace",
    "check_partition",
    "check_prompt",
    "check_tags",
    "digest",
    "entry_key",
    "namespace_of",
    "normalize_prompt",
    "partition_of",
    "prepare",
]

#: Namespaces: 1 to 128 characters, letters, digits and ``_ . : @ / + = -``, starting with a
#: letter or digit. ``#`` and ``!`` are kept out: they separate the namespace from the scope
#: hash in the engine's partition name.
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=\-]{0,127}")
#: Tags: 1 to 128 printable characters without whitespace.
TAG_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")
MAX_TAGS = 32
DEFAULT_NAMESPACE = "default"
#: Chat request parameters that do not change the answer, left out of a chat request's scope:
#: streaming, attribution, transport and storage options. Every other parameter (temperature,
#: top_p, max_tokens, tools, response_format, seed, an Ollama ``format`` or ``options``, an
#: Anthropic-style ``system``, ...) is part of the scope, so an unknown one is never ignored.
NEUTRAL_PARAMETERS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "timeout",
        "extra_headers",
        "extra_query",
        "keep_alive",
    }
)
#: Keyword names ``store`` takes for itself, so they cannot be scope values.
RESERVED_SCOPE_NAMES = frozenset({"ttl", "tags", "usage", "cost"})


class PromptKey(NamedTuple):
    """A checked lookup: the text embedded (the normalised prompt), the engine partition
    (namespace + scope hash) and the normalised prompt the exact path compares."""

    text: str
    partition: str
    normalized: str


def normalize_prompt(prompt: str) -> str:
    """The form the exact path compares: Unicode NFKC, runs of whitespace as one space, no
    leading or trailing whitespace. Case and punctuation are kept (they can change an answer)."""
    return " ".join(unicodedata.normalize("NFKC", prompt).split())


def _plain(value: Any) -> Any:
    """``value`` with integral floats as ints (so ``temperature=1`` and ``1.0`` are one scope)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def canonical(value: Any, what: str) -> str:
    try:
        text = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON values (str, number, bool, None, lists, dicts): {err}") from None
    if not text.isascii():
        _check_strings(value, what)  # ValueError naming a lone surrogate, if any
    return text


def _check_strings(value: Any, what: str) -> None:
    """``ValueError`` for the first str (key or value) in ``value`` holding a lone surrogate."""
    if isinstance(value, str):
        check_no_surrogate(value, f"{what}: the string {value!r}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_strings(key, what)
            _check_strings(item, what)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_strings(item, what)


def digest(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size, person=b"bsc-scope").digest()


def check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is invalid: use 1 to 128 letters, digits and _ . : @ / + = -, "
            "starting with a letter or digit"
        )
    return namespace


def check_prompt(prompt: Any, limit: int) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty (or only whitespace): there is nothing to match")
    if len(prompt) > limit:
        raise ValueError(f"prompt has {len(prompt):,} characters, more than max_prompt_chars={limit:,}")
    check_no_surrogate(prompt, "prompt")
    return prompt


def check_tags(tags: Any) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = (tags,)
    if not isinstance(tags, Iterable):
        raise TypeError(f"tags must be an iterable of str, got {type(tags).__name__}")
    out = tuple(dict.fromkeys(tags))
    for tag in out:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be str, got {type(tag).__name__}")
        if not TAG_PATTERN.fullmatch(tag):
            raise ValueError(f"tag {tag!r} is invalid: use 1 to 128 printable characters without whitespace")
        check_no_surrogate(tag, f"tag {tag!r}")
    if len(out) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per entry, got {len(out)}")
    return out


def check_entry_ttl(ttl: Any) -> float | None:
    try:
        return check_ttl(ttl)
    except (TypeError, ValueError) as err:
        raise type(err)(str(err).replace("default_ttl", "ttl")) from None


def bypasses(scope: Mapping[str, Any], max_temperature: float) -> bool:
    """Whether a request with ``scope`` skips the cache: its ``temperature`` (or an Ollama
    ``options.temperature``) is above ``max_temperature``."""
    temperature = scope.get("temperature")
    options = scope.get("options")
    if temperature is None and isinstance(options, Mapping):
        temperature = options.get("temperature")  # Ollama puts it there
    if temperature is None:
        return False
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number, got {temperature!r}")
    return temperature > max_temperature


def partition_of(namespace: str, scope: Mapping[str, Any]) -> str:
    """The engine's partition name: the namespace, ``#`` and a hash of the scope."""
    given = {name: value for name, value in scope.items() if value is not None}
    scope_hash = digest(canonical(given, "scope values"), 12).hex() if given else ""
    return f"{namespace}#{scope_hash}"


_SCOPE_HASH = re.compile(r"(?:[0-9a-f]{24})?")


def check_partition(partition: Any) -> str:
    """``ValueError`` unless ``partition`` is a name :func:`partition_of` makes: a valid
    namespace, ``#`` and an empty or 24-hex-digit scope hash."""
    namespace, sep, scope_hash = partition.partition("#") if isinstance(partition, str) else ("", "", "")
    if not sep or not NAMESPACE_PATTERN.fullmatch(namespace) or not _SCOPE_HASH.fullmatch(scope_hash):
        raise ValueError(f"{partition!r} is not a partition prepare() makes")
    return str(partition)


def namespace_of(partition: str) -> str:
    """The namespace a partition name belongs to."""
    return partition.split("#", 1)[0]


def entry_key(partition: str, normalized: str) -> int:
    """The exact path's 64-bit key (never 0) of a normalised prompt in a partition."""
    key = int.from_bytes(digest(f"{partition}\x00{normalized}", 8), "little")
    return key or 1


def prepare(
    prompt: Any, namespace: Any, scope: Mapping[str, Any], *, max_prompt_chars: int, max_temperature: float
) -> PromptKey | None:
    """Checks a lookup; its :class:`PromptKey`, or ``None`` when it bypasses the cache. The
    text embedded is the normalised prompt, so prompts the exact path treats as equal are also
    embedded, and sorted into partitions, alike."""
    prompt = check_prompt(prompt, max_prompt_chars)
    namespace = check_namespace(namespace)
    reserved = RESERVED_SCOPE_NAMES.intersection(scope)
    if reserved:
        raise TypeError(
            f"{', '.join(sorted(reserved))} cannot be scope values: they are store() arguments "
            "(a lookup does not take them)"
        )
    partition = partition_of(namespace, scope)
    if bypasses(scope, max_temperature):
        return None
    normalized = normalize_prompt(prompt)
    return PromptKey(normalized, partition, normalized)


def chat_scope(messages: Sequence[Mapping[str, Any]], *, model: str, **params: Any) -> tuple[str, dict[str, Any]]:
    """Split a chat request into the text matched semantically and the scope matched exactly.

    Returns ``(prompt, scope)``: ``prompt`` is the text of the last message, which must be the
    user's; ``scope`` holds the model, every parameter in ``params`` except those of
    :data:`NEUTRAL_PARAMETERS` (``stream``, ``user``, timeouts, ...: they do not change the
    answer) and those given as ``None``, and a hash of every earlier message (the system prompt
    and all earlier turns) and of any non-text part of the last one. Two requests can share an
    answer only if their scopes are equal: the same model, parameters, system prompt and
    conversation so far.
    """
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a non-empty str")
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:  # type: ignore[unreachable]
        raise ValueError("messages must be a non-empty list of chat messages")
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        raise ValueError("the last message must be the user's ({'role': 'user', 'content': ...})")
    content = last.get("content")
    other_parts: list[Any] = []
    if isinstance(content, str):
        prompt = content
    elif isinstance(content, Sequence) and not isinstance(content, (str, bytes)):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                other_parts.append(part)  # images, audio, files: matched exactly, through the scope
        prompt = "\n".join(texts)
    else:
        raise ValueError("the last message's content must be a str or a list of content parts")
    earlier = [dict(m) for m in messages[:-1]]
    rest = {k: v for k, v in last.items() if k not in ("content", "role")}
    context = canonical([earlier, other_parts, rest], "chat messages")
    scope: dict[str, Any] = {"model": model, "context": digest(context, 16).hex()}
    for name, value in params.items():
        if name in ("model", "context") or name in RESERVED_SCOPE_NAMES:
            raise TypeError(f"{name!r} cannot be a chat parameter here")
        if name not in NEUTRAL_PARAMETERS and value is not None:
            scope[name] = value
    canonical(scope, "chat parameters")
    return prompt, scope
