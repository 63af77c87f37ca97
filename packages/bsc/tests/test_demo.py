"""``bsc demo``: the main job, run offline with the local embedder."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from bsc import __version__
from bsc.cli import main
from bsc.demo import load_pairs


def demo_json(capsys, *args: str) -> dict:
    assert main(["demo", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def write_pairs(path, rows) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, (a, b, label) in enumerate(rows):
            f.write(json.dumps({"id": i, "text_a": a, "text_b": b, "label": label}) + "\n")
    return str(path)


def test_shipped_sample_replays_with_a_consistent_report(capsys):
    pairs, name = load_pairs()
    assert len(pairs) == 400 and "sample" in name
    report = demo_json(capsys, "--limit", "60")
    assert report["pairs"] == 60 and report["lookups"] == 120
    assert report["llm_calls_made"] + report["llm_calls_saved"] == report["lookups"]
    assert 1 <= report["entries"] <= 60
    buckets = ["correct_hits", "false_hits", "other_hits", "repeat_hits"]
    assert sum(report[b] for b in buckets) == report["hits"]
    assert report["correct_hits"] + report["missed_duplicates"] <= report["duplicate_pairs"]
    assert report["embedder"] == "all-MiniLM-L6-v2" and report["code_bits"] == 256
    assert report["lookup_median_us"] > 0 and report["index_bytes_per_entry"] > 32


def test_verbatim_repeats_all_hit_and_unrelated_questions_never_do(tmp_path, capsys):
    questions = ["How do I cook rice?", "Why is the sky blue?", "What is a good laptop for programming?",
                 "How can I improve my English vocabulary?", "When did the Roman Empire fall?"]  # fmt: skip
    same = [(q, q, 1) for q in questions]
    unrelated = [
        ("What is the capital of France?", "How many legs does a spider have?", 0),
        ("Who wrote Hamlet?", "What is the boiling point of water at sea level?", 0),
        ("How do I change a car tyre?", "Which planet is the largest in the solar system?", 0),
    ]
    report = demo_json(capsys, "--data", write_pairs(tmp_path / "p.jsonl.gz", same + unrelated), "--threshold", "0.95")
    assert report["correct_hits"] == 5 and report["false_hits"] == 0 and report["missed_duplicates"] == 0
    assert report["entries"] == 8 and report["duplicate_pairs"] == 5


def test_text_report_names_every_figure(capsys):
    assert main(["demo", "--limit", "20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for needle in ["entries stored", "hit rate", "correct hits", "false hits", "LLM calls saved", "median",
                   "p99", "memory per entry"]:  # fmt: skip
        assert needle in out


def test_plain_jsonl_and_limit(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text_a": f"q {i}", "text_b": f"q {i}?", "label": 1})
                              for i in range(10)) + "\n", encoding="utf-8")  # fmt: skip
    assert demo_json(capsys, "--data", str(path), "--limit", "4")["pairs"] == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "text_a": "a"}\n', "line 1: not a question pair"),
        ('{"id": 1, "text_a": "a", "text_b": "b", "label": 7}\n', "label must be 0 or 1"),
        ("\n", "holds no question pairs"),
        ("not json\n", "line 1"),
    ],
)
def test_bad_data_files(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    assert main(["demo", "--data", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_gzip_file(tmp_path, capsys):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    assert main(["demo", "--data", str(path)]) == 2
    assert "bsc demo: error:" in capsys.readouterr().err
    whole = gzip.compress(b'{"id": 1, "text_a": "a", "text_b": "b", "label": 1}\n' * 50)
    path.write_bytes(whole[: len(whole) // 2])  # truncated
    assert main(["demo", "--data", str(path)]) == 2


def test_missing_data_file(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nope.jsonl.gz")]) == 2
    assert "no such data file" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--threshold", "2"], ["--code-bits", "100"], ["--limit", "0"]])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", *args])
    assert exited.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_help_and_version():
    run = subprocess.run([sys.executable, "-m", "bsc", "demo", "--help"], capture_output=True, text=True, check=True)
    assert "--data PATH" in run.stdout
    run = subprocess.run([sys.executable, "-m", "bsc", "--version"], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"bsc {__version__}"
