"""``SemanticCache``, the text-level cache, as a package of modules with one job each.

========================  ===========================================================
module                    its job
========================  ===========================================================
``semantic.cache``        :class:`SemanticCache`: the public methods, tying the rest up
``semantic.keys``         checks, normalisation, partition and key of a prompt; chat scope
``semantic.records``      the record stored in each entry; the :class:`Hit` served
``semantic.embedding``    embedding prompts (and remembering the latest ones)
``semantic.ranking``      the exact path and the semantic path (rescoring, the gate)
``semantic.invalidation`` the tag index behind ``delete_tag``
``semantic.metrics``      counters, the similarity histogram, :class:`SemanticStats`
``semantic.saved``        the settings saved with a file, checked when it opens
``semantic.files``        saved files read without an embedder (``bsc stats``/``inspect``)
``semantic.chat``         the ``*_chat`` methods
``semantic.decorator``    :func:`semantic_cache`
``semantic.selfcheck``    self-checking: answers compared near the threshold, thresholds learned
========================  ===========================================================
"""

from bsc.semantic.cache import SemanticCache
from bsc.semantic.decorator import semantic_cache
from bsc.semantic.files import describe_file, list_entries
from bsc.semantic.keys import (
    DEFAULT_NAMESPACE,
    NAMESPACE_PATTERN,
    NEUTRAL_PARAMETERS,
    TAG_PATTERN,
    PromptKey,
    chat_scope,
    normalize_prompt,
)
from bsc.semantic.metrics import SemanticStats
from bsc.semantic.records import Hit, quantize
from bsc.semantic.selfcheck import Check, SelfCheck, same_answer

__all__ = [
    "DEFAULT_NAMESPACE",
    "NAMESPACE_PATTERN",
    "NEUTRAL_PARAMETERS",
    "TAG_PATTERN",
    "Check",
    "Hit",
    "PromptKey",
    "SelfCheck",
    "SemanticCache",
    "SemanticStats",
    "chat_scope",
    "describe_file",
    "list_entries",
    "normalize_prompt",
    "quantize",
    "same_answer",
    "semantic_cache",
]
