"""The content gate: details that two similar prompts must share before one's answer serves the other.

An embedding says two prompts are *about* the same thing; it barely sees that "What is 1+1?"
and "What is 21+1?" ask for different answers. Before :class:`~bsc.SemanticCache` serves a
semantic (not exact) hit with ``content_gate`` on, :meth:`ContentGate.veto` compares the new
prompt with the stored one, rule by rule, and any rule that finds a difference vetoes the hit.
The rules (docs/QUALITY.md measures what each costs and saves; docs/SEMANTICS.md states them):

- ``numbers``: the numbers differ, compared as sets of text: digits as written (``1,000`` =
  ``1000``, ``.5`` = ``0.5``, ``3rd`` = ``3``; ``2.50`` is not ``2.5`` and ``3.10`` not
  ``3.1``; ``1.2.3`` whole; ``1e5``; ``-5``) and number words from ``two`` to ``billion``
  (``two`` = ``2``; ``one`` is left out, as in "which one").
- ``dates``: the months, weekdays or relative days (``today``, ``tomorrow``, ...) differ
  (``jan`` = ``january``); years are numbers.
- ``quantities``: a number's unit differs (``5 km`` against ``5 miles``), or a unit is named in
  one prompt only (``kg`` = ``kilograms``; ``%``, ``$``, ``°C``, ... anywhere).
- ``negation``: one prompt is negated and the other is not (``not``, ``n't`` with a straight
  or typographic apostrophe, ``never``, ``no``, ``without``, ...).
- ``quoted``: the quoted strings differ (``"..."``, ``'...'``, ````...````, curly quotes);
  compared exactly, case and all.
- ``opposites``: one prompt says a word whose opposite the other says instead (``lose`` /
  ``gain``, ``buy`` / ``sell``, ``best`` / ``worst``, ...; :data:`OPPOSITES`).
- ``entities``: a capitalised word inside a sentence of one prompt (a name: ``France``,
  ``Python``) is missing from the other in any case.

Everything is local regular expressions and word lists: no model, no network, microseconds
per check. It is a heuristic: it vetoes some right answers (docs/QUALITY.md counts them) and
misses differences it has no rule for.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["OPPOSITES", "ContentGate"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
# A number not glued to a letter before it ("mp3"): digits with commas and dots (1,000 / 2.5 /
# 192.168.1.1 / 3,1,2), or a leading-dot decimal (.5), with an optional exponent (1e5).
_NUMBER = re.compile(r"(?<![^\W\d_])(?<![\d.,])(\d[\d,]*(?:\.\d+)*|\.\d+)(e[+-]?\d+)?")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SYMBOL_UNITS = re.compile(r"[%$€£₹]|°[cf]")
_UNIT_AFTER = re.compile(r" ?(%|°[cf]|[^\W\d_]+)")
_CURRENCY = re.compile(r"([$€£₹]) ?(\d[\d,]*(?:\.\d+)?)")
# A capitalised word at the start of the text or right after these is not taken for a name.
_SENTENCE_BREAKS = frozenset('.?!:;\n"“(')
_NUMBER_WORDS = {
    **{
        w: i
        for i, w in enumerate(
            ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"], 2
        )
    },
    **{
        w: i
        for i, w in enumerate(["thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"], 13)
    },
    **{
        w: 10 * i
        for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], 2)
    },
    "hundred": 100,
    "thousand": 1_000,
    "million": 1_000_000,
    "billion": 1_000_000_000,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "tenth": 10,
    "twice": 2,
    "half": 0.5,
}
_MONTHS = {
    name: i
    for i, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        1,
    )
    for name in names
}
_DAYS = {
    name: f"d{i}"
    for i, names in enumerate(
        (
            ("monday", "mon"),
            ("tuesday", "tue", "tues"),
            ("wednesday", "wed"),
            ("thursday", "thu", "thur", "thurs"),
            ("friday", "fri"),
            ("saturday", "sat"),
            ("sunday", "sun"),
            ("today", "tonight"),
            ("tomorrow",),
            ("yesterday",),
            ("weekend",),
        )
    )
    # "Mondays" = "Monday"
    for name in (*names, *(n + "s" for n in names if n.endswith(("day", "end")) and n not in ("today", "yesterday")))
}
# "may", "march", "sun", "sat", "wed", ... are also ordinary words: these months and days count
# only capitalised or next to a number ("May 5", "5 march").
_AMBIGUOUS_DATES = frozenset({"may", "march", "mar", "sun", "sat", "wed", "dec", "jan", "mon", "fri"})
_UNITS = {
    name: canonical
    for canonical, names in (
        ("%", ("%", "percent", "percentage", "pct")),
        ("$", ("$", "usd", "dollar", "dollars", "bucks")),
        ("€", ("€", "eur", "euro", "euros")),
        ("£", ("£", "gbp", "pound", "pounds", "quid")),
        ("₹", ("₹", "inr", "rupee", "rupees", "rs")),
        ("km", ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres")),
        ("m", ("meter", "meters", "metre", "metres")),
        ("cm", ("cm", "centimeter", "centimeters", "centimetre", "centimetres")),
        ("mm", ("mm", "millimeter", "millimeters")),
        ("mi", ("mi", "mile", "miles")),
        ("ft", ("ft", "foot", "feet")),
        ("in", ("inch", "inches")),
        ("kg", ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms")),
        ("g", ("gram", "grams", "gm", "gms")),
        ("lb", ("lb", "lbs")),
        ("l", ("liter", "liters", "litre", "litres")),
        ("ml", ("ml", "milliliter", "milliliters")),
        ("gal", ("gallon", "gallons")),
        ("°c", ("°c", "celsius", "centigrade")),
        ("°f", ("°f", "fahrenheit")),
        ("kb", ("kb", "kilobyte", "kilobytes")),
        ("mb", ("mb", "megabyte", "megabytes")),
        ("gb", ("gb", "gigabyte", "gigabytes")),
        ("tb", ("tb", "terabyte", "terabytes")),
        ("ghz", ("ghz",)),
        ("mhz", ("mhz",)),
        ("mph", ("mph",)),
        ("kmh", ("kmph", "kph")),
        ("w", ("watt", "watts")),
        ("kw", ("kw", "kilowatt", "kilowatts")),
        ("v", ("volt", "volts")),
        ("mah", ("mah",)),
        ("s", ("sec", "secs", "second", "seconds")),
        ("min", ("min", "mins", "minute", "minutes")),
        ("h", ("hr", "hrs", "hour", "hours")),
        ("day", ("day", "days")),
        ("week", ("week", "weeks", "wk", "wks")),
        ("month", ("month", "months")),
        ("year", ("yr", "yrs", "year", "years")),
        ("cal", ("cal", "calorie", "calories", "kcal")),
        ("x", ("x", "times")),
    )
    for name in names
}
# Unit words that count named alone, without a number ("in kg or lbs?"); the others ("in", "m",
# "day", "years", "miles", "dollars", ...) are ordinary words too, and count only right after a
# number. Symbols (%, $, °C, ...) count anywhere (_SYMBOL_UNITS).
_ALONE = {"%", "$", "€", "£", "₹", "km", "cm", "mm", "mi", "ft", "kg", "lb", "°c", "°f"}
_ALONE |= {"kb", "mb", "gb", "tb", "ghz", "mhz", "mph", "kmh", "kw", "mah"}
_NOT_ALONE = {"pound", "pounds", "dollar", "dollars", "euro", "euros", "rupee", "rupees", "rs", "mi", "mile", "miles"}
_NOT_ALONE |= {"foot", "feet"}
_BARE_UNITS = frozenset(n for n, unit in _UNITS.items() if unit in _ALONE and n.isalpha() and n not in _NOT_ALONE)
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without", "cannot", "cant"}
)
# "...", curly double quotes, curly single quotes, `...`, and '...' not inside a word.
_QUOTED = re.compile(
    "\"([^\"]+)\"|\u201c([^\u201d]+)\u201d|\u2018([^\u2019]+)\u2019|`([^`]+)`|(?<![\\w])'([^']+)'(?![\\w])"
)

#: Opposite words (each side with its inflections): a prompt that says one side where the
#: other prompt says the other asks something else.
OPPOSITES: tuple[tuple[frozenset[str], frozenset[str]], ...] = tuple(
    (frozenset(a.split()), frozenset(b.split()))
    for a, b in (
        ("lose losing loses lost", "gain gaining gains gained put"),
        (
            "increase increasing increases increased raise raising",
            "decrease decreasing decreases decreased reduce reducing lower lowering",
        ),
        ("buy buying buys bought", "sell selling sells sold"),
        ("best", "worst"),
        ("better", "worse"),
        ("advantages advantage pros benefits", "disadvantages disadvantage cons drawbacks"),
        ("start starting starts started begin beginning", "stop stopping stops stopped end ending quit quitting"),
        ("enable enabling enabled", "disable disabling disabled"),
        ("add adding adds added", "remove removing removes removed delete deleting"),
        ("before", "after"),
        ("maximum max maximize highest", "minimum min minimize lowest"),
        ("more most", "less least fewer fewest"),
        ("up", "down"),
        ("upload uploading", "download downloading"),
        ("import importing", "export exporting"),
        ("encrypt encrypting encryption", "decrypt decrypting decryption"),
        ("compress compressing compression", "decompress decompressing decompression"),
        ("encode encoding", "decode decoding"),
        ("hot hotter", "cold colder"),
        ("cheap cheapest cheaper", "expensive costly"),
        ("fast faster fastest", "slow slower slowest"),
        ("true", "false"),
        ("legal", "illegal"),
        ("safe", "unsafe dangerous"),
        ("healthy", "unhealthy"),
        ("possible", "impossible"),
        ("love", "hate"),
        ("win winning won", "lose losing lost"),
        ("male men man boy boys", "female women woman girl girls"),
        ("left", "right"),
        ("north", "south"),
        ("east", "west"),
        ("import", "export"),
        ("open opening", "close closing"),
        ("on", "off"),
        ("first", "last"),
        ("positive", "negative"),
        ("strong stronger", "weak weaker"),
        ("rich richer", "poor poorer"),
        ("long longer longest", "short shorter shortest"),
        ("high higher", "low lower"),
        ("big bigger biggest large larger", "small smaller smallest"),
        ("old older oldest", "new newer newest young younger"),
        ("easy easier easiest", "hard harder hardest difficult"),
    )
)
_RULES = ("numbers", "dates", "quantities", "negation", "quoted", "opposites", "entities")


def _numbers(raw: str, exponent: str | None = None) -> list[str]:
    """The numbers a digit string writes, compared as text: thousands commas dropped
    (``1,000`` = ``1000``), other commas separate numbers (``3,1,2``), leading zeros dropped,
    a leading dot read as ``0.``; decimals keep their digits (``3.10`` is not ``3.1``: versions),
    and dotted groups (``1.2.3``, addresses) stay whole."""
    if exponent:
        return [raw + exponent]
    if "," in raw and not _THOUSANDS.fullmatch(raw):
        return [n for part in raw.split(",") if part for n in _numbers(part)]
    raw = raw.replace(",", "")
    if raw.startswith("."):
        raw = "0" + raw
    whole, dot, rest = raw.partition(".")
    return [(whole.lstrip("0") or "0") + dot + rest]


@dataclass(frozen=True, slots=True)
class _Features:
    numbers: frozenset[str]
    dates: frozenset[str]
    quantities: frozenset[tuple[str, str]]
    units: frozenset[str]
    negated: bool
    quoted: frozenset[str]
    words: frozenset[str]
    entities: frozenset[str]


def _starts_sentence(text: str, at: int) -> bool:
    at -= 1
    while at >= 0 and text[at] in " \t":
        at -= 1
    return at < 0 or text[at] in _SENTENCE_BREAKS


# A lookup checks one prompt against several candidates, and stored prompts recur: features of
# short texts are cached (long ones are not, so the cache stays small).
_CACHED_CHARS = 2000


def _features(text: str) -> _Features:
    return _features_cached(text) if len(text) <= _CACHED_CHARS else _features_of(text)


@functools.lru_cache(maxsize=4096)
def _features_cached(text: str) -> _Features:
    return _features_of(text)


def _features_of(text: str) -> _Features:
    lower = text.lower()
    numbers: set[str] = set()
    quantities: set[tuple[str, str]] = set()
    units: set[str] = set()
    for m in _NUMBER.finditer(lower):
        values = _numbers(m.group(1), m.group(2))
        at = m.start()
        if at and lower[at - 1] == "-" and (at < 2 or not lower[at - 2].isalnum()):
            values[0] = "-" + values[0]  # a minus sign, not a hyphen ("COVID-19") or a range ("2-3")
        numbers.update(values)
        unit = _UNIT_AFTER.match(lower, m.end())
        if unit is not None and unit.group(1) in _UNITS:
            quantities.add((values[-1], _UNITS[unit.group(1)]))
    for m in _CURRENCY.finditer(lower):
        quantities.add((_numbers(m.group(2))[-1], m.group(1)))
    units.update(unit for _, unit in quantities)
    units.update(_UNITS[symbol] for symbol in _SYMBOL_UNITS.findall(lower))
    # Typographic apostrophes (phones and Macs type them, U+2019) read as "'": "don\u2019t" is "don't".
    tokens = [(m.group(0), m.start()) for m in _WORD.finditer(text.replace("\u2019", "'").replace("\u02bc", "'"))]
    words = [t.lower() for t, _ in tokens]
    dates: set[str] = set()
    negated = False
    entities: set[str] = set()
    for i, (token, start) in enumerate(tokens):
        word = words[i]
        before = words[i - 1] if i else ""
        after = words[i + 1] if i + 1 < len(words) else ""
        capitalised = token[:1].isupper()
        if word in _NUMBER_WORDS:
            value = _numbers(str(_NUMBER_WORDS[word]))[0]
            numbers.add(value)
            if after in _UNITS:
                quantities.add((value, _UNITS[after]))
                units.add(_UNITS[after])
        elif word in _BARE_UNITS:
            units.add(_UNITS[word])
        if word in _MONTHS or word in _DAYS:
            near_number = before[:1].isdigit() or after[:1].isdigit()
            if word not in _AMBIGUOUS_DATES or capitalised or near_number:
                dates.add(f"m{_MONTHS[word]}" if word in _MONTHS else _DAYS[word])
        elif capitalised and word != "i" and not _starts_sentence(text, start):
            entities.add(word)
        if word in _NEGATIONS or word.endswith("n't"):
            negated = True
    quoted = frozenset(next(g for g in m.groups() if g is not None).strip() for m in _QUOTED.finditer(text))
    return _Features(
        frozenset(numbers),
        frozenset(dates),
        frozenset(quantities),
        frozenset(units),
        negated,
        quoted,
        frozenset(words),
        frozenset(entities),
    )


def _opposed(a: frozenset[str], b: frozenset[str]) -> bool:
    for one, other in OPPOSITES:
        if (a & one and b & other and not b & one) or (b & one and a & other and not a & one):
            return True
    return False


def _pair(prompt: Any, stored: Any) -> tuple[_Features, _Features]:
    for name, value in (("prompt", prompt), ("stored", stored)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return _features(prompt), _features(stored)


_CHECKS: dict[str, Callable[[_Features, _Features], bool]] = {
    "numbers": lambda a, b: a.numbers != b.numbers,
    "dates": lambda a, b: a.dates != b.dates,
    "quantities": lambda a, b: a.quantities != b.quantities or a.units != b.units,
    "negation": lambda a, b: a.negated != b.negated,
    "quoted": lambda a, b: a.quoted != b.quoted,
    "opposites": lambda a, b: _opposed(a.words, b.words),
    "entities": lambda a, b: bool(a.entities - b.words or b.entities - a.words),
}


@dataclass(frozen=True, slots=True)
class ContentGate:
    """Which rules veto a semantic hit (all on by default; see the module docs for each).

    ``SemanticCache(content_gate=True)`` uses ``ContentGate()``; pass an instance to choose,
    e.g. ``ContentGate(entities=False)``."""

    numbers: bool = True
    dates: bool = True
    quantities: bool = True
    negation: bool = True
    quoted: bool = True
    opposites: bool = True
    entities: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"ContentGate.{f.name} must be a bool, got {getattr(self, f.name)!r}")

    def veto(self, prompt: str, stored: str) -> str | None:
        """The first rule under which ``prompt`` and the ``stored`` prompt differ (its name), or
        ``None`` when the hit may be served."""
        a, b = _pair(prompt, stored)
        for rule in _RULES:
            if getattr(self, rule) and _CHECKS[rule](a, b):
                return rule
        return None

    def differences(self, prompt: str, stored: str) -> tuple[str, ...]:
        """Every rule of this gate under which the two prompts differ (``veto`` stops at the
        first)."""
        a, b = _pair(prompt, stored)
        return tuple(rule for rule in _RULES if getattr(self, rule) and _CHECKS[rule](a, b))

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, rules: dict[str, Any]) -> ContentGate:
        unknown = set(rules) - set(_RULES)
        if unknown:
            raise ValueError(f"unknown content gate rules: {sorted(unknown)}; known: {list(_RULES)}")
        return cls(**rules)


def gate_arg(content_gate: Any) -> ContentGate | None:
    """``SemanticCache``'s ``content_gate`` argument as a gate (``None``: off)."""
    if content_gate is None or content_gate is False:
        return None
    if content_gate is True:
        return ContentGate()
    if isinstance(content_gate, ContentGate):
        return content_gate
    raise TypeError(f"content_gate must be a bool or a ContentGate, got {type(content_gate).__name__}")
