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
from collections.abc import Callable, Container, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

__all__ = ["OPPOSITES", "RULES", "RULE_OVERLAP", "ContentGate", "Verifier", "findings", "overlap"]


def _words(text: str) -> list[str]:
    return text.split()


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
# A number not glued to a letter before it ("mp3"): digits with commas and dots (1,000 / 2.5 /
# 192.168.1.1 / 3,1,2), or a leading-dot decimal (.5), with an optional exponent (1e5).
_NUMBER = re.compile(r"(?<![^\W\d_])(?<![\d.,])(\d[\d,]*(?:\.\d+)*|\.\d+)(e[+-]?\d+)?")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SYMBOL_UNITS = re.compile(r"[%$€£₹¥]|°[cf]")
_UNIT_AFTER = re.compile(r"[ -]?(%|°[cf]|[^\W\d_]+)")
_CURRENCY = re.compile(r"([$€£₹¥]) ?(\d[\d,]*(?:\.\d+)?)")
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
            ("morning",),
            ("afternoon",),
            ("evening",),
            ("night", "overnight"),
            ("noon", "midday"),
            ("midnight",),
            ("winter",),
            ("summer",),
            ("autumn",),
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
        ("¥", ("¥", "jpy", "yen")),
        ("cny", ("cny", "yuan", "rmb", "renminbi")),
        ("chf", ("chf", "franc", "francs")),
        ("cad", ("cad",)),
        ("aud", ("aud",)),
        ("btc", ("btc", "bitcoin", "bitcoins")),
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
        ("st", ("stone", "stones")),
        ("l", ("liter", "liters", "litre", "litres")),
        ("ml", ("ml", "milliliter", "milliliters")),
        ("gal", ("gallon", "gallons")),
        ("cup", ("cup", "cups")),
        ("tbsp", ("tbsp", "tablespoon", "tablespoons")),
        ("tsp", ("tsp", "teaspoon", "teaspoons")),
        ("oz", ("oz", "ounce", "ounces")),
        ("pt", ("pint", "pints")),
        ("qt", ("quart", "quarts")),
        ("yd", ("yd", "yard", "yards")),
        ("acre", ("acre", "acres")),
        ("ha", ("hectare", "hectares")),
        ("k", ("kelvin",)),
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
        ("word", ("word", "words")),
        ("char", ("character", "characters", "char", "chars")),
        ("page", ("page", "pages")),
        ("line", ("line", "lines")),
        ("sentence", ("sentence", "sentences")),
        ("paragraph", ("paragraph", "paragraphs")),
        ("ms", ("ms", "millisecond", "milliseconds")),
        ("mbps", ("mbps",)),
        ("gbps", ("gbps",)),
        ("kbps", ("kbps",)),
        ("psi", ("psi",)),
        ("bar", ("bar",)),
        ("kpa", ("kpa",)),
        ("am", ("am",)),
        ("pm", ("pm",)),
    )
    for name in names
}
# Unit words that count named alone, without a number ("in kg or lbs?"); the others ("in", "m",
# "day", "years", "miles", "dollars", ...) are ordinary words too, and count only right after a
# number. Symbols (%, $, °C, ...) count anywhere (_SYMBOL_UNITS).
_ALONE = {"%", "$", "€", "£", "₹", "¥", "km", "cm", "mm", "mi", "ft", "kg", "lb", "°c", "°f", "k"}
_ALONE |= {"kb", "mb", "gb", "tb", "ghz", "mhz", "mph", "kmh", "kw", "mah", "cny", "chf", "cad", "aud", "btc"}
_ALONE |= {"tbsp", "tsp", "oz", "ha"}
_NOT_ALONE = {"pound", "pounds", "dollar", "dollars", "euro", "euros", "rupee", "rupees", "rs", "mi", "mile", "miles"}
_NOT_ALONE |= {"foot", "feet"}
_BARE_UNITS = frozenset(n for n, unit in _UNITS.items() if unit in _ALONE and n.isalpha() and n not in _NOT_ALONE)
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without", "cannot", "cant"}
    # contractions typed without the apostrophe ("wont" and "shant" are left out: words too)
    | {f"{verb}nt" for verb in _words("do does did is are was were has have had could would should must need")}
    | {"dont", "aint"}
)
# A unit word right after these names the unit asked for, without a number ("height in feet",
# "pace per mile", "convert to euros"); right before "of" after "many"/"much" it counts too
# ("how many cups of flour").
_UNIT_CUES = frozenset({"in", "into", "per", "to", "square", "cubic", "us"})
_COUNT_UNITS = frozenset({"x", "am", "pm", "word", "char", "page", "line", "sentence", "paragraph", "day"})
# Relative periods: "next month" is not "last month" nor "tomorrow".
_RELATIVE = frozenset({"next", "last", "this", "previous", "coming"})
_PERIODS = frozenset({"week", "month", "year", "quarter", "weekend", "spring", "fall", "winter", "summer", "autumn"})
_SEASON_CUES = frozenset({"in", "early", "late", "mid", "during", "the"}) | _RELATIVE
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
        ("hot hotter hottest warm warmer warmest warmup", "cold colder coldest cool cooler coolest cooldown"),
        ("old older oldest elder eldest", "young younger youngest"),
        ("thick thicker thickest thicken", "thin thinner thinnest"),
        ("deep deeper deepest", "shallow shallower shallowest"),
        ("wide wider widest", "narrow narrower narrowest"),
        ("heavy heavier heaviest", "light lighter lightest"),
        ("ascending asc", "descending desc"),
        ("accept accepting accepts accepted", "decline declining declines declined reject rejecting rejected"),
        ("even", "odd"),
        ("show showing shows", "hide hiding hides"),
        ("include including includes included", "exclude excluding excludes excluded"),
        ("allow allowing allows allowed", "deny denying denies denied block blocking blocks blocked"),
        ("push pushing", "pull pulling"),
        ("send sending sends sent", "receive receiving receives received"),
        ("input inputs", "output outputs"),
        ("inside", "outside"),
        ("above", "below"),
        ("top", "bottom"),
        ("early earlier earliest", "late later latest"),
        ("pass passing passed", "fail failing failed"),
        ("success successful", "failure unsuccessful"),
        ("northern northernmost", "southern southernmost"),
        ("eastern easternmost", "western westernmost"),
        ("uppercase upper", "lowercase lower"),
        ("horizontal horizontally", "vertical vertically"),
        ("join joining", "leave leaving"),
        ("hire hiring hired", "fire firing fired"),
        ("arrive arrival arriving", "depart departure departing"),
        ("freeze freezing", "thaw thawing"),
        ("expand expanding", "collapse collapsing"),
    )
)
# Prefixes that make a word its opposite: "stage" / "unstage", "formal" / "informal", "upgrade"
# / "downgrade", "overestimate" / "underestimate".
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de", "anti")
_SWAPPED_PREFIXES = (("up", "down"), ("over", "under"), ("in", "out"), ("pre", "post"))
# Asymmetric connectors: "A to B" is not "B to A" ("translate English to French", "miles to km",
# "subtract 7 from 20", "merge dev into main", "is Rust faster than Go").
_CONNECTORS = frozenset({"to", "from", "than", "over", "by", "on", "of", "for", "against", "versus"})
_SAME_CONNECTOR = {"into": "to", "onto": "to", "vs": "versus"}
_MAX_ORDER_WORDS = 64
# Words that are not what a connector relates (articles, pronouns, auxiliaries, question words).
_FUNCTION_WORDS = frozenset(
    _words(
        "a an the this that these those my your our their his her its i me we you he she it they them "
        "is are was were be been being am do does did doing have has had can could should would will "
        "shall may might must what which who whom whose how why when where there here some any all "
        "each every and or but if so as at in with about just also very really please much many more "
        "most less to into from than onto over by on of for not no against versus vs"
    )
)
# A token of code: an operator, a flag or a call (x += 1, --hard, len(x), a[0], a->b, $HOME, ~/x).
_CODE = re.compile(r"[^\s]*(?:[=<>!+\-*/%&|^~]=|&&|\|\||->|=>|::|<<|>>|\*\*|//|--\w|[(){}\[\];$\\]|\w\.\w+\()[^\s]*")
#: For each rule, the :func:`overlap` under which it does not veto: chosen on QQP dev as the
#: overlap (0, 0.1, ..., 0.8) at which the rule removes the most wrong hits net of right ones
#: at threshold 0.80 with rescoring (ties: the lowest) (``benchmarks/quality.py`` re-derives it; docs/QUALITY.md).
RULE_OVERLAP: dict[str, float] = {
    "numbers": 0.5,
    "dates": 0.1,
    "quantities": 0.7,
    "negation": 0.7,
    "quoted": 0.1,
    "opposites": 0.7,
    "order": 0.7,
    "code": 0.5,
    "entities": 0.7,
}
_OPPOSITE_WORDS = frozenset(w for pair in OPPOSITES for side in pair for w in side)
_RULES = ("numbers", "dates", "quantities", "negation", "quoted", "opposites", "order", "code", "entities")
#: The rules, in the order ``veto`` tries them.
RULES = _RULES


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
    order: tuple[str, ...]
    code: frozenset[str]
    # The words no rule looks at (not function words, numbers, units, dates, negations, opposite
    # words or names): how alike the two prompts are worded, apart from the details compared.
    rest: frozenset[str]


def _named_unit(word: str, before: str, after: str) -> bool:
    """A unit word named as the unit asked for ("in feet", "per mile", "how many cups of")."""
    return (
        word in _UNITS
        and _UNITS[word] not in _COUNT_UNITS
        and (before in _UNIT_CUES or (after == "of" and before in ("many", "much")))
    )


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
        elif word in _BARE_UNITS or _named_unit(word, before, after):
            units.add(_UNITS[word])
        base = word[:-2] if word.endswith("'s") else word  # "yesterday's"
        if base in _MONTHS or base in _DAYS:
            near_number = before[:1].isdigit() or after[:1].isdigit()
            if base not in _AMBIGUOUS_DATES or capitalised or near_number:
                dates.add(f"m{_MONTHS[base]}" if base in _MONTHS else _DAYS[base])
        elif base in _PERIODS and before in _RELATIVE:
            dates.add(f"{before} {base}")
        elif base in ("spring", "fall") and before in _SEASON_CUES:
            dates.add(base)
        elif capitalised and word != "i" and not _starts_sentence(text, start):
            entities.add(word)
        if word in _NEGATIONS or word.endswith("n't"):
            negated = True
    quoted = frozenset(next(g for g in m.groups() if g is not None).strip() for m in _QUOTED.finditer(text))
    code = frozenset(m.group(0).rstrip(".,?!:") for m in _CODE.finditer(lower))
    rest = frozenset(
        w
        for w in words
        if w.isalpha()
        and w not in _FUNCTION_WORDS
        and w not in _NEGATIONS
        and w not in _UNITS
        and w not in _NUMBER_WORDS
        and w not in _MONTHS
        and w not in _DAYS
        and w not in _PERIODS
        and w not in _OPPOSITE_WORDS
        and w not in entities
        and not w.endswith("n't")
    )
    return _Features(
        frozenset(numbers),
        frozenset(dates),
        frozenset(quantities),
        frozenset(units),
        negated,
        quoted,
        frozenset(words),
        frozenset(entities),
        _order(words),
        code,
        rest,
    )


def _order(words: list[str]) -> tuple[str, ...]:
    """The words a swap can move, in order: no function words except the connectors ("to",
    "than", "from", ...; "into" counts as "to"), each only if it occurs once (numbering the
    occurrences of a repeated one mismatches them when a clause moves: "the boiling point of
    water at the top of Everest" / "at the top of Everest, the boiling point of water")."""
    kept = [_SAME_CONNECTOR.get(w, w) for w in words]
    kept = [w for w in kept if w in _CONNECTORS or w not in _FUNCTION_WORDS]
    counts: dict[str, int] = {}
    for w in kept:
        counts[w] = counts.get(w, 0) + 1
    return tuple(w for w in kept if counts[w] == 1)


def _swapped(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two words of ``a`` trade places in ``b`` around a word that stays between them
    ("Caesar defeated Pompey" / "Pompey defeated Caesar", "English to French" / "French to
    English", "2 to the power of 10" / "10 to the power of 2"). A clause moved whole ("In Python,
    how do I ..." / "How do I ... in Python?") keeps no word between the two it passes."""
    where = {w: i for i, w in enumerate(b)}
    shared = [w for w in a if w in where][:_MAX_ORDER_WORDS]
    for i, x in enumerate(shared):
        for k in range(i + 2, len(shared)):
            y = shared[k]
            if where[x] < where[y]:
                continue
            for j in range(i + 1, k):
                if where[y] < where[shared[j]] < where[x]:
                    return True
    return False


def _opposed(a: frozenset[str], b: frozenset[str]) -> bool:
    for one, other in OPPOSITES:
        if (a & one and b & other and not b & one) or (b & one and a & other and not a & one):
            return True
    return _prefixed(a - b, b - a) or _prefixed(b - a, a - b)


def _prefixed(only_a: frozenset[str], only_b: frozenset[str]) -> bool:
    """A word of one prompt that the other says with a negating prefix ("stage" / "unstage"), or
    with the opposite prefix ("upgrade" / "downgrade")."""
    return bool(_prefix_matches(only_a, only_b))


def _prefix_matches(only_a: Iterable[str], only_b: Container[str]) -> set[tuple[str, str]]:
    """The pairs (word of ``only_a``, word of ``only_b``) where the second is the first with a
    negating or the opposite prefix."""
    out: set[tuple[str, str]] = set()
    for word in only_a:
        if len(word) < 3 or not word.isalpha():
            continue
        out.update((word, prefix + word) for prefix in _NEGATING_PREFIXES if prefix + word in only_b)
        for one, other in _SWAPPED_PREFIXES:
            if word.startswith(one) and len(word) > len(one) + 2 and other + word[len(one) :] in only_b:
                out.add((word, other + word[len(one) :]))
    return out


def _pair(prompt: Any, stored: Any) -> tuple[_Features, _Features]:
    for name, value in (("prompt", prompt), ("stored", stored)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return _features(prompt), _features(stored)


def findings(prompt: str, stored: str) -> tuple[float, dict[str, bool]]:
    """The two prompts' :func:`overlap` and, for every rule, whether it finds a conflict
    before the overlap condition (what ``benchmarks/defaults.py`` measures each rule by)."""
    a, b = _pair(prompt, stored)
    return _overlap(a, b), {rule: _CHECKS[rule](a, b) for rule in _RULES}


def overlap(prompt: str, stored: str) -> float:
    """The Jaccard overlap of the two prompts' words that no rule looks at (see
    :func:`findings`)."""
    return _overlap(*_pair(prompt, stored))


def _overlap(a: _Features, b: _Features) -> float:
    """The Jaccard overlap of the words no rule looks at (1.0 when neither has any); a word
    and its prefixed opposite ("stage" / "unstage") are the opposites rule's, not counted."""
    shared = len(a.rest & b.rest)
    only_a, only_b = set(a.rest - b.rest), set(b.rest - a.rest)
    for word_a, word_b in _prefix_matches(only_a, only_b) | {(x, y) for y, x in _prefix_matches(only_b, only_a)}:
        only_a.discard(word_a)
        only_b.discard(word_b)
    union = shared + len(only_a) + len(only_b)
    return shared / union if union > 0 else 1.0


def _conflict(a: frozenset[Any], b: frozenset[Any]) -> bool:
    """Both prompts state values of a kind, and not the same ones. A value one prompt leaves
    out is not a conflict: paraphrases often drop a detail ("in 2019" / no year)."""
    return bool(a) and bool(b) and a != b


_CHECKS: dict[str, Callable[[_Features, _Features], bool]] = {
    "numbers": lambda a, b: _conflict(a.numbers, b.numbers),
    "dates": lambda a, b: _conflict(a.dates, b.dates),
    "quantities": lambda a, b: _conflict(a.quantities, b.quantities) or _conflict(a.units, b.units),
    "negation": lambda a, b: a.negated != b.negated,
    "quoted": lambda a, b: _conflict(a.quoted, b.quoted),
    "opposites": lambda a, b: _opposed(a.words, b.words),
    "order": lambda a, b: _swapped(a.order, b.order),
    "code": lambda a, b: _conflict(a.code, b.code),
    "entities": lambda a, b: bool(a.entities - b.words and b.entities - a.words),
}


@runtime_checkable
class Verifier(Protocol):
    """Decides whether a semantic candidate may answer a prompt: ``verify`` returns why not (a
    short reason, e.g. the rule's name) or ``None`` to serve it. :class:`ContentGate` is one;
    pass any as ``SemanticCache(content_gate=...)``."""

    def verify(self, prompt: str, stored: str, similarity: float) -> str | None: ...


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
    order: bool = True
    code: bool = True
    entities: bool = True
    min_overlap: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "min_overlap":
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
                ):
                    raise ValueError(f"ContentGate.min_overlap must be a number from 0 to 1, got {value!r}")
            elif not isinstance(value, bool):
                raise TypeError(f"ContentGate.{f.name} must be a bool, got {value!r}")

    def veto(self, prompt: str, stored: str) -> str | None:
        """The first rule under which ``prompt`` and the ``stored`` prompt differ (its name), or
        ``None`` when the hit may be served."""
        found = self.differences(prompt, stored)
        return found[0] if found else None

    def verify(self, prompt: str, stored: str, similarity: float) -> str | None:
        """The :class:`Verifier` interface: :meth:`veto` (the similarity is not used)."""
        return self.veto(prompt, stored)

    def differences(self, prompt: str, stored: str) -> tuple[str, ...]:
        """Every rule of this gate under which the two prompts differ (``veto`` stops at the
        first). A rule does not veto when the prompts are worded too differently apart from the
        details the rules compare (:func:`overlap` under ``min_overlap``, default each rule's
        :data:`RULE_OVERLAP`): a difference it sees may then be said another way in the other
        prompt ("I forgot" / "I can't remember")."""
        a, b = _pair(prompt, stored)
        found = [rule for rule in _RULES if getattr(self, rule) and _CHECKS[rule](a, b)]
        if not found:
            return ()
        alike = _overlap(a, b)  # only when a rule found something: most candidates pass
        return tuple(
            rule for rule in found if alike >= (RULE_OVERLAP[rule] if self.min_overlap is None else self.min_overlap)
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, rules: dict[str, Any]) -> ContentGate:
        unknown = set(rules) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown content gate rules: {sorted(unknown)}; known: {list(_RULES)}")
        return cls(**rules)


def gate_arg(content_gate: Any) -> Verifier | None:
    """``SemanticCache``'s ``content_gate`` argument as a verifier (``None``: off)."""
    if content_gate is None or content_gate is False:
        return None
    if content_gate is True:
        return ContentGate()
    if isinstance(content_gate, ContentGate) or (
        not isinstance(content_gate, type) and isinstance(content_gate, Verifier)
    ):
        return content_gate
    raise TypeError(
        f"content_gate must be a bool, a ContentGate or a Verifier (with verify()), got {type(content_gate).__name__}"
    )
