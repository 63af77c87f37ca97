"""The content gate (bsc.gate) and the shipped adversarial set."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from bsc import SemanticCache
from bsc.gate import RULE_OVERLAP, ContentGate, Verifier, findings, overlap
from bsc_backends import LocalEmbedder
from bsc_backends.testing import WordEmbedder

GATE = ContentGate()


@pytest.mark.parametrize(
    ("stored", "asked", "rule"),
    [
        ("What is 1+1?", "What is 21+1?", "numbers"),
        ("Price of 1,000 shares", "Price of 1000 shares", None),  # the same number written two ways
        ("Is 2.50 enough?", "Is 2.5 enough?", "numbers"),  # decimals compare digit by digit
        ("Use Python 3.10", "Use Python 3.1", "numbers"),  # versions
        ("Is .5 enough?", "Is 0.5 enough?", None),
        ("Is 007 a spy?", "Is 7 a spy?", None),
        ("Is 1e5 big?", "Is 1e9 big?", "numbers"),
        ("Sort 3,1,2", "Sort 3,9,7", "numbers"),
        ("Ping 192.168.1.1", "Ping 192.168.1.2", "numbers"),
        ("Is -5 cold?", "Is 5 cold?", "numbers"),
        ("COVID-19 cases", "COVID 19 cases", None),  # a hyphen, not a minus sign
        ("Order 9400111899223856924513", "Order 9400111899223856924514", "numbers"),  # no float rounding
        ("Give me two examples", "Give me 2 examples", None),
        ("Give me two examples", "Give me three examples", "numbers"),
        ("Which one is better?", "Which is better?", None),  # "one" is not read as a number
        ("Who won in 2018?", "Who won in 2022?", "numbers"),
        ("Is the shop open on Monday?", "Is the shop open on Sunday?", "dates"),
        ("Is the shop open on Monday?", "Is the shop open Mondays?", None),
        ("Holidays in Dec?", "Holidays in December?", None),
        ("You may go", "You can go", None),  # "may" is a month only capitalised or by a number
        ("Events on May 5", "Events on June 5", "dates"),
        ("Convert 5 km to miles", "Convert 5 miles to km", "quantities"),
        ("How far is 5km?", "How far is 5 km?", None),
        ("How far is 5 kilometers?", "How far is 5 km?", None),
        ("How much is $100 in euros?", "How much is 100 dollars in euros?", None),
        ("How much is $100 in euros?", "How much is 100 pounds in euros?", "quantities"),
        ("Is it safe?", "Is it not safe?", "negation"),
        ("Why do cats purr?", "Why don't cats purr?", "negation"),
        ("Why don't cats swim?", "Why do cats not swim?", None),
        ("Why don\u2019t cats swim?", "Why do cats swim?", "negation"),  # a typographic apostrophe
        ("Growth in %", "Growth in $", "quantities"),  # symbols named alone
        ("Is it 30 °C?", "Is it 30 °F?", "quantities"),
        ('Translate "good morning"', 'Translate "good night"', "dates"),  # and quoted (below)
        ("Search for `foo`", "Search for `bar`", "quoted"),
        ("How do I lose weight?", "How do I gain weight?", "opposites"),
        ("When should I buy a house?", "When should I sell a house?", "opposites"),
        ("What is the capital of France?", "What is the capital of Germany?", "entities"),
        ("How do I learn Python?", "What is the best way to learn python?", None),  # names compare in any case
        ("Hello. Where is it?", "Hello. Where's it?", None),  # a capital after a full stop is not a name
    ],
)
def test_rules(stored: str, asked: str, rule: str | None) -> None:
    assert GATE.veto(asked, stored) == rule
    assert GATE.veto(stored, asked) == rule  # symmetric


@pytest.mark.parametrize(
    ("stored", "asked", "rule"),
    [
        # order: two words trade places around one that stays between them
        ("Translate English to French", "Translate French to English", "order"),
        ("Is Rust faster than Go?", "Is Go faster than Rust?", "order"),
        ("Subtract 7 from 20", "Subtract 20 from 7", "order"),
        ("Did Caesar defeat Pompey at Pharsalus?", "Did Pompey defeat Caesar at Pharsalus?", "order"),
        ("Move money from savings to checking", "Move money from checking into savings", "order"),
        ("In Python, how do I reverse a list?", "How do I reverse a list in Python?", None),  # a clause moved
        ("How to convert string to int in Java", "In Java, how to convert string to int", None),
        (  # a clause with a repeated connector moved whole
            "What is the melting point of iron at the pressure of one atmosphere?",
            "At the pressure of one atmosphere, what is the melting point of iron?",
            None,
        ),
        # code: operators, flags and calls
        ("What does git reset --hard do?", "What does git reset --soft do?", "code"),
        ("Why is x += 1 slow?", "Why is x -= 1 slow?", "code"),
        ("What does len(x) return?", "What does len(x) return here?", None),
        # units without a number, times of day, seasons, relative periods
        ("How tall is Everest in feet?", "How tall is Everest in meters?", "quantities"),
        ("What is the price in euros?", "What is the price in US dollars?", "quantities"),
        ("How many cups of flour for bread?", "How many grams of flour for bread?", "quantities"),
        ("Remind me at 9am", "Remind me at 9pm", "quantities"),
        ("Write a 500-word essay", "Write a 500-character essay", "quantities"),
        ("Best places to visit in winter", "Best places to visit in summer", "dates"),
        ("What can I plant in early spring?", "What can I plant in early fall?", "dates"),
        ("Is the office open next week?", "Is the office open next month?", "dates"),
        ("How do I get yesterday's date?", "How do I get tomorrow's date?", "dates"),
        # prefixed and listed opposites
        ("How do I stage a file in git?", "How do I unstage a file in git?", "opposites"),
        ("How do I upgrade my plan?", "How do I downgrade my plan?", "opposites"),
        ("Sort the list in ascending order", "Sort the list in descending order", "opposites"),
        # negation typed without an apostrophe
        ("Why has my order shipped?", "Why hasnt my order shipped?", "negation"),
        # a value one prompt leaves out is no conflict; a swapped one is
        ("How do I learn Python 3?", "How do I learn Python?", None),
        ("Flights to Paris in May", "Flights to Paris", None),
        ("What is the capital of Austria?", "What is the capital of Australia?", "entities"),
        ("What does Docker do?", "What does docker do?", None),
    ],
)
def test_new_rules(stored: str, asked: str, rule: str | None) -> None:
    assert GATE.veto(asked, stored) == rule
    assert GATE.veto(stored, asked) == rule


def test_a_rule_vetoes_only_where_the_prompts_are_worded_alike() -> None:
    """The same conflicting number, in prompts worded alike and in prompts worded apart."""
    alike = ("How many days are there in 2024?", "How many days are there in 2023?")
    apart = (
        "Tell me about the 2024 elections in every state and their results",
        "Who won in 2023, and what did the polls predict?",
    )
    assert GATE.veto(*alike) == "numbers"
    assert overlap(*apart) < RULE_OVERLAP["numbers"]
    assert GATE.veto(*apart) is None
    assert ContentGate(min_overlap=0).veto(*apart) == "numbers"  # one overlap for every rule
    alike_found = findings(*alike)
    assert alike_found[0] == 1.0 and alike_found[1]["numbers"] and not alike_found[1]["dates"]
    with pytest.raises(ValueError, match="min_overlap"):
        ContentGate(min_overlap=1.5)


def test_any_verifier_can_replace_the_gate() -> None:
    class NoQuestions:
        def verify(self, prompt: str, stored: str, similarity: float) -> str | None:
            return "question" if prompt.endswith("?") else None

    assert isinstance(GATE, Verifier) and GATE.verify("What is 21+1?", "What is 1+1?", 0.9) == "numbers"
    words = WordEmbedder()
    with SemanticCache(words, 0.5, content_gate=NoQuestions(), persist_every=None, persist_interval=None) as cache:
        assert isinstance(cache.content_gate, NoQuestions)
        cache.store("how do I learn python fast", "A")
        assert cache.lookup("how do I learn python quickly") is not None
        assert cache.lookup("how do I learn python quickly?") is None
        assert cache.stats().gate_vetoes == 1


def test_rules_can_be_turned_off_one_by_one() -> None:
    assert ContentGate(numbers=False).veto("What is 21+1?", "What is 1+1?") is None
    assert ContentGate(entities=False).veto("Capital of Germany?", "Capital of France?") is None
    only_numbers = ContentGate(
        dates=False, quantities=False, negation=False, quoted=False, opposites=False, entities=False
    )
    assert only_numbers.veto("Is it not safe?", "Is it safe?") is None
    assert GATE.differences("Is it not safe in 2020?", "Is it safe in 2021?") == ("numbers", "negation")


def test_bad_settings() -> None:
    with pytest.raises(TypeError, match="numbers must be a bool"):
        ContentGate(numbers=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown content gate rules"):
        ContentGate.from_dict({"numbers": True, "colour": True})
    with pytest.raises(TypeError, match="prompt must be a str, got int"):
        GATE.veto(5, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stored must be a str, got NoneType"):
        GATE.differences("x", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="content_gate must be a bool, a ContentGate or a Verifier"):
        SemanticCache(LocalEmbedder(), content_gate="on")  # type: ignore[arg-type]


def _adversarial() -> list[dict[str, Any]]:
    raw = resources.files("bsc").joinpath("data/adversarial.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


def _outcomes(embedder: LocalEmbedder, cases: list[dict[str, Any]], gate: bool) -> list[str]:
    # One cache per case; each stores one prompt, so nothing else can answer it.
    got = []
    for case in cases:
        with SemanticCache(embedder, content_gate=gate, persist_every=None, persist_interval=None) as cache:
            cache.store(case["stored"], "answer")
            got.append("miss" if cache.lookup(case["query"]) is None else "hit")
    return got


def test_adversarial_set_is_well_formed() -> None:
    cases = _adversarial()
    assert len(cases) >= 50
    for case in cases:
        assert set(case) == {"category", "stored", "query", "expect"}
        assert case["expect"] in ("hit", "miss")
    categories = {c["category"] for c in cases}
    assert {"numbers", "dates", "quantities", "negation", "quoted", "opposites", "entities", "paraphrase"} <= categories
    assert sum(c["expect"] == "hit" for c in cases) >= 10  # a gate that vetoes everything fails


def test_adversarial_set_passes_with_the_gate_on(local: LocalEmbedder) -> None:
    cases = _adversarial()
    got = _outcomes(local, cases, gate=True)
    wrong = [(c["category"], c["stored"], c["query"], g) for c, g in zip(cases, got, strict=True) if g != c["expect"]]
    assert wrong == []


def test_adversarial_set_needs_the_gate(local: LocalEmbedder) -> None:
    """Without the gate the embedding alone serves many of the wrong answers: the set tests the gate."""
    cases = _adversarial()
    got = _outcomes(local, cases, gate=False)
    served_wrong = sum(g == "hit" and c["expect"] == "miss" for c, g in zip(cases, got, strict=True))
    assert served_wrong >= 20
