"""The decorator: cache a function whose first argument is the prompt."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from bsc.semantic.cache import SemanticCache
from bsc.semantic.keys import DEFAULT_NAMESPACE, canonical, check_entry_ttl, check_namespace, check_tags

logger = logging.getLogger("bsc")

__all__ = ["semantic_cache"]

F = TypeVar("F", bound=Callable[..., Any])


def _not_cached(fn: Callable[..., Any], err: Exception) -> None:
    """A result the cache cannot store is returned all the same (it was paid for), and logged."""
    logger.warning("bsc: the result of %s was returned but not cached: %s", fn.__qualname__, err)


def semantic_cache(
    cache: SemanticCache | Callable[[], SemanticCache] | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    ttl: float | None = None,
    tags: Iterable[str] | None = None,
) -> Callable[[F], F]:
    """Cache a function whose first argument is the prompt, sync or ``async``.

    Its other arguments (defaults applied) and its qualified name form the scope, so calls with
    other arguments never share an answer; they must be JSON values (``TypeError`` otherwise).
    ``cache``: a :class:`SemanticCache`, a function returning one (called on first use), or
    ``None`` for a ``SemanticCache()`` made on first use; the wrapper's ``cache()`` returns it.
    A ``temperature`` argument also counts as the request's temperature (``max_temperature``).
    Return values must be ``str``, ``bytes`` or JSON values to be cached; any other is returned
    uncached, with a warning on the ``bsc`` logger. Functions are told apart by module and
    qualified name: closures made by one factory share answers unless their differences are
    arguments or the ``namespace``::

        @semantic_cache()
        def answer(question: str, model: str = "gpt-4o-mini") -> str: ...
    """
    checked_namespace = check_namespace(namespace)
    checked_tags = check_tags(tags)
    checked_ttl = check_entry_ttl(ttl)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        if not signature.parameters:
            raise TypeError(f"{fn.__qualname__} takes no arguments: its first argument must be the prompt")
        name = f"{fn.__module__}.{fn.__qualname__}"
        lock = threading.Lock()
        made: list[SemanticCache] = []

        def get_cache() -> SemanticCache:
            with lock:
                if not made:
                    if isinstance(cache, SemanticCache):
                        made.append(cache)
                    else:
                        made.append(cache() if cache is not None else SemanticCache())
                return made[0]

        def split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = list(bound.arguments.items())
            prompt = values[0][1]
            arguments = dict(values[1:])
            canonical(arguments, f"the arguments of {fn.__qualname__} (the cache scope)")
            out: dict[str, Any] = {"scope": {"function": name, "arguments": arguments}}
            if "temperature" in arguments:  # so max_temperature applies
                out["temperature"] = arguments["temperature"]
            return prompt, out

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                prompt, scope = split(args, kwargs)
                target = get_cache()
                hit = await target.alookup(prompt, namespace=checked_namespace, **scope)
                if hit is not None:
                    return hit.response
                result = await fn(*args, **kwargs)
                try:
                    await target.astore(
                        prompt, result, namespace=checked_namespace, ttl=checked_ttl, tags=checked_tags, **scope
                    )
                except (TypeError, ValueError) as err:
                    _not_cached(fn, err)
                return result

            async_wrapper.cache = get_cache  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            prompt, scope = split(args, kwargs)
            target = get_cache()
            hit = target.lookup(prompt, namespace=checked_namespace, **scope)
            if hit is not None:
                return hit.response
            result = fn(*args, **kwargs)
            try:
                target.store(prompt, result, namespace=checked_namespace, ttl=checked_ttl, tags=checked_tags, **scope)
            except (TypeError, ValueError) as err:
                _not_cached(fn, err)
            return result

        wrapper.cache = get_cache  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
