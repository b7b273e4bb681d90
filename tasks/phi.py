"""Identifiers out of free text: transcripts, model justifications and rationales, before they leave private/.

``scrub(text)`` returns the text with every identifier it finds replaced by a
typed placeholder (``PLACEHOLDERS``: ``[NAME]``, ``[DATE]``, ``[AGE]``,
``[ID]``, ``[PHONE]``, ``[EMAIL]``, ``[ADDRESS]``) and the spans it replaced
(kind, start, end in the input).  Rules and dictionaries only: no model, no
download, the same output for the same text.

What it finds, in the written and the spoken forms Whisper produces:

* **names**: after a title (``Mr``, ``Dr.``, ``Nurse``), after a cue ("my name
  is", "this is", "hi", "her son"), any capitalised census first name (with
  the capitalised words after it: surnames), spelled-out letters ("D-O-E");
* **dates**: numeric (``3/4/1961``, ``1961-03-04``), with a month name
  ("March 4th, 1961", "the fourth of March", "March nineteen sixty-one"),
  four-digit and spoken years ("nineteen sixty-one", "two thousand and five");
* **ages over 89** ("ninety-two years old", "aged 93");
* **ids**: runs of five or more digits (with spaces or dashes), five or more
  spoken digits ("four four seven one nine oh three", "double four"; a plain
  count "one, two, three, four, five" is kept: it is how a nurse tests
  responsiveness), anything after an id cue ("MRN", "medical record number",
  "social security"), letters+digits codes;
* **phone numbers**, **e-mail addresses** (also "jane dot doe at gmail dot
  com") and **street addresses** ("12 Oak Street", "apartment 4B").

The census first-name list comes from the ``names`` package (US Census 1990).
A name that is also a common English word ("Will", "Hope", "May") counts only
where its capital is not explained by the sentence start or after a cue.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

from tasks.errors import SemioflowError

NAME, DATE, AGE, ID, PHONE, EMAIL, ADDRESS = "NAME", "DATE", "AGE", "ID", "PHONE", "EMAIL", "ADDRESS"
KINDS = (NAME, DATE, AGE, ID, PHONE, EMAIL, ADDRESS)  # closed set; the placeholder is "[KIND]"
PLACEHOLDERS = {k: f"[{k}]" for k in KINDS}
# When spans of two kinds overlap, the merged span takes the kind listed first.
PRIORITY = (EMAIL, PHONE, ADDRESS, DATE, AGE, ID, NAME)
OLDEST_AGE_KEPT = 89  # HIPAA Safe Harbor: ages over 89 are identifiers
MIN_ID_DIGITS = 5  # a shorter digit run is a dose, a count or a time, not an id
# First names that are also common English words (census first names whose lower-case form is one
# GPT-2 token among the 20,000 most frequent, plus months and flowers): never a name just for their capital.
COMMON_WORD_NAMES = frozenset("""
aide al alpha an angel angle ann art bell ben bill bo brain buck bud candy carry chance chang charity chase
cliff conception cris crystal dawn deb del desire diamond dick don dot drew echo ed else era faith fe flo
forest foster frank gay gene glory golden grace grant guy ha hal hang honey hope hung hunter in jack jewel jo
joy junior king kit lady lane le lean len les li liberty lin ling loan long love ma mac major man mana manual
many marg marine mark marry max may meg mel mercy meta miles min miss moon my na nan nick noble nu numbers ok
olive pa page pat patience phil precious prince queen rich rob rod rose roy royal sal sam season see sid so sol
son song soon spring star su summer sun temple tim tiny tom tu ty un val van von ward will winter young
april june august january march sunny rusty sandy penny ruby pearl iris violet hazel ivy amber daisy holly
heather autumn sky earl duke sterling
""".split())
# Capitalised words that are never names here (clinical acronyms spelled out are not names either).
NEVER_NAMES = frozenset("i ok okay god eeg ekg ecg mri ct icu emu er iv mom mum dad mommy daddy honey sweetie "
                        "dear love buddy sir madam ma'am baby darling".split())

_UNITS = "zero|oh|one|two|three|four|five|six|seven|eight|nine"
_TEENS = "ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen"
_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_ORDS = ("first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
         "fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|thirtieth")
_DIGIT_WORD = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_DIGIT_WORD["oh"] = 0
_NUMBER_WORD = {**_DIGIT_WORD, **{w: 10 + i for i, w in enumerate(_TEENS.split("|"))},
                **{w: 20 + 10 * i for i, w in enumerate(_TENS.split("|"))}}

_MONTHS_FULL = "January|February|March|April|May|June|July|August|September|October|November|December"
_MONTHS_ABBR = r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec"
# May and March are words too ("you may", "march"): a month only with a capital and a day or year beside it
_MONTH = rf"(?:{_MONTHS_FULL}|(?:{_MONTHS_ABBR})\.?)"
_MONTH_ALONE = r"(?:January|February|April|June|July|September|October|November|December)"

_TENS_UNIT = rf"(?:{_TENS})(?:[- ](?:{_UNITS}))?"
_DAY = rf"(?:\d{{1,2}}(?:st|nd|rd|th)?|(?:twenty|thirty)[- ](?:{_ORDS})|{_ORDS}|{_TEENS}|{_TENS_UNIT}|{_UNITS})"
_SPOKEN_YEAR = (rf"(?:(?:nineteen|eighteen|twenty)[- ](?:{_TENS_UNIT}|{_TEENS}|(?:oh|o)[- ](?:{_UNITS})|hundred)"
                rf"|two thousand(?:[- ]and)?(?:[- ](?:{_TENS_UNIT}|{_TEENS}|{_UNITS}))?)")
_YEAR = rf"(?:\b(?:1[89]|20)\d\d\b|'\d\d\b|{_SPOKEN_YEAR})"
_SEP = r"(?:,?\s+)"

_PATTERNS: list[tuple[str, str, int]] = [
    # (kind, pattern, flags)
    (EMAIL, r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", 0),
    (EMAIL, r"\b\w+(?:\s+(?:dot|underscore)\s+\w+)*\s+at\s+\w+(?:\s+dot\s+\w+)*\s+dot\s+"
            r"(?:com|org|net|edu|gov|co|uk|de|fr|io|us|ca)\b", re.I),
    (PHONE, r"(?<![\w-])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b", 0),
    (ADDRESS, rf"\b(?:\d+[A-Za-z]?|(?:(?:{_UNITS}|{_TEENS}|{_TENS}|hundred)[- ]?)+)\s+(?:[NSEW]\.?\s+|(?:North|South|"
              r"East|West)\s+)?(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Boulevard|"
              r"Blvd|Court|Ct|Way|Place|Pl|Terrace|Circle|Parkway|Highway|Hwy)\b\.?", 0),
    (ADDRESS, r"\b(?:apartment|apt\.?|unit|suite|room|bed)\s*#?\s*\d+[A-Za-z]?\b", re.I),
    (ADDRESS, r"\bP\.?\s?O\.?\s+Box\s+\d+\b", re.I),
    (DATE, r"\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b", 0),
    (DATE, r"\b\d{4}[/.-]\d{1,2}[/.-]\d{1,2}\b", 0),
    (DATE, rf"\b{_MONTH}{_SEP}(?:the\s+)?{_DAY}\b(?:{_SEP}(?:of\s+)?{_YEAR})?", 0),
    (DATE, rf"\b(?:the\s+)?{_DAY}(?:\s+of)?\s+{_MONTH}\b(?:{_SEP}{_YEAR})?", 0),
    (DATE, rf"\b{_MONTH}{_SEP}(?:of\s+)?{_YEAR}", 0),
    (DATE, rf"\b{_MONTH_ALONE}\b", 0),
    (DATE, rf"(?<![\w-]){_YEAR}", re.I),
    (ID, r"\b(?:MRN|M\.?\s?R\.?\s?N\.?|medical record(?: number)?|record number|patient (?:id|number)|"
         r"id number|account number|social security(?: number)?|SSN|insurance (?:id|number)|member id|"
         r"chart number)\b(?:\s*(?:is|was|:|#|number|no\.?))*\s*"
         rf"(?P<v>(?:(?:[A-Z]*\d[A-Z0-9]*|[A-Z]\b|(?:{_UNITS}|{_TEENS}|{_TENS}|double|triple|hundred)\b)[\s,.-]*){{1,16}})",
     re.I),
    (ID, r"\b\d(?:[\s-]?\d){4,}\b", 0),
    (ID, r"\b(?=[A-Z]*\d)(?=\d*[A-Z])[A-Z0-9]{2,}\d{3,}[A-Z0-9]*\b", 0),
]
_COMPILED = [(kind, re.compile(p, flags)) for kind, p, flags in _PATTERNS]

_NUM_TOKEN = re.compile(rf"\b(?:double|triple|{_UNITS}|{_TEENS}|{_TENS})\b", re.I)
_AGE = re.compile(rf"\b((?:\d{{2,3}})|(?:{_TENS_UNIT}|{_TEENS}|one hundred(?: and)?(?:[- ](?:{_TENS_UNIT}|{_TEENS}|"
                  rf"{_UNITS}))?))(?:[- ]|\s+)(?:years?|yrs?)(?:[- ]|\s+)old\b"
                  rf"|\b(?:aged?|age of)\s+((?:\d{{2,3}})|{_TENS_UNIT}|one hundred(?:[- ]\w+)?)\b", re.I)

_TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Mister|Missus|Dr|Doctor|Nurse|Professor|Prof|Sister|Father|Auntie|Aunt|Uncle|Grandma|Grandpa)"
# a capitalised name word: Kevin, O'Connor, McDonald, Al-Hassan (not the "Don" of "Don't")
_WORD = r"(?:[A-Z]['’][A-Z][a-z]+|[A-Z][a-z]+(?:[A-Z][a-z]+)?(?:['’-][A-Z][a-z]+)?)(?!['’](?:t|re|ve|ll|d|m)\b)"
_NAME_WORDS = rf"{_WORD}(?:\s+{_WORD}){{0,2}}"
_STRONG_CUE = re.compile(rf"\b(?:my name is|name's|named|called|call me|this is|I am|I'm|it's|it is)\s+"
                         rf"((?:[A-Za-z][a-z]+(?:['’-][A-Za-z][a-z]+)?)(?:\s+{_WORD}){{0,2}})", re.I)
# after these, capitalised words are a name (a vocative, a relative's name), listed or not
_WEAK_CUE = re.compile(rf"\b(?:hi|hello|hey|thanks|thank you|okay|ok|bye|goodbye|well done|good job|come on|sorry|"
                       rf"patient|son|daughter|wife|husband|mother|mom|"
                       rf"mum|father|dad|sister|brother|friend|partner|grandson|granddaughter)\b,?\s+({_NAME_WORDS})",
                       re.I)
TITLES = frozenset(re.sub(r"[()?:]", "", _TITLE).lower().split("|"))
_TITLED = re.compile(rf"\b{_TITLE}\.?\s+({_NAME_WORDS})")
_CAP_WORD = re.compile(_WORD)
_SPELLED = re.compile(r"(?<![\w'’])(?:[A-Z]\.?[\s-]){2,}[A-Z]\b\.?(?![\w-])")  # "D-O-E", "D. O. E."
# Words a strong cue ("call me", "this is") may be followed by that are not a name.
NOT_NAMES_AFTER_CUE = frozenset("""
a an the at in on to for of from with by not no so just very really now here there going trying sorry fine sure
okay ok good going done that this it what your my his her their our back up down out over all right still also
""".split())


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Scrubbed:
    text: str
    spans: tuple[Span, ...]  # in the input's coordinates, sorted, non-overlapping

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.spans)


def _census(*files: str) -> frozenset[str]:
    """The names (lower case) of census list ``files`` in the ``names`` package."""
    try:
        import names
    except ImportError:  # a project dependency; an error that says what to install
        raise SemioflowError("the `names` package (census name lists) is missing: `make install` installs it "
                             "(or `pip install names==0.3.0`)") from None
    out = set()
    for f in files:
        with open(os.path.join(os.path.dirname(names.__file__), f), encoding="ascii") as fh:
            out.update(line.split()[0].lower() for line in fh if line.strip())
    return frozenset(out)


@lru_cache(maxsize=1)
def first_names() -> frozenset[str]:
    """Census first names (lower case)."""
    return _census("dist.female.first", "dist.male.first")


@lru_cache(maxsize=1)
def last_names() -> frozenset[str]:
    """Census surnames (lower case): a lower-case word after a cued first name is a surname only if listed."""
    return _census("dist.all.last")


def _sentence_start(text: str, i: int) -> bool:
    j = i - 1
    while j >= 0 and text[j] in " \t\"'(“‘":
        j -= 1
    return j < 0 or text[j] in ".!?\n:;…"


def _is_name_word(word: str, *, loose: bool) -> bool:
    """A capitalised word that names a person: a census first name not also a common word (``loose``: the
    common words too, where a cue or a title says a name follows)."""
    w = word.lower().split("'")[0].split("’")[0]
    if w in NEVER_NAMES:
        return False
    return w in first_names() and (loose or w not in COMMON_WORD_NAMES)


def _name_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _TITLED.finditer(text):  # a title: whatever capitalised words follow are the name
        spans.append(Span(NAME, m.start(1), m.end(1)))
    for m in _STRONG_CUE.finditer(text):
        words = m.group(1)
        first = words.split()[0]
        cue = m.group(0)[: m.start(1) - m.start(0)].strip().lower()
        if first.lower() in NOT_NAMES_AFTER_CUE or first.lower() in NEVER_NAMES:
            continue
        strong = cue in ("my name is", "name's", "named", "called", "call me")
        if (strong and (first[0].isupper() or _is_name_word(first, loose=True))) or (
                first[0].isupper() and _is_name_word(first, loose=True)):
            spans.append(Span(NAME, m.start(1), m.start(1) + _name_extent(text[m.start(1):], lower_ok=strong)))
    for m in _WEAK_CUE.finditer(text):
        first = m.group(1).split()[0]
        if first[0].isupper() and first.lower() not in NEVER_NAMES | TITLES | NOT_NAMES_AFTER_CUE:
            spans.append(Span(NAME, m.start(1), m.start(1) + _name_extent(m.group(1))))
    for m in _CAP_WORD.finditer(text):  # any capitalised first name, with the capitalised words after it
        word = m.group(0)
        if _is_name_word(word, loose=False) or (
                not _sentence_start(text, m.start()) and _is_name_word(word, loose=True)
                and not _month_context(text, m)):
            rest = re.match(rf"(?:\s+{_WORD}){{0,2}}", text[m.end():])
            spans.append(Span(NAME, m.start(), m.end() + (rest.end() if rest else 0)))
    for m in _SPELLED.finditer(text):
        letters = re.sub(r"[\s.-]", "", m.group(0)).lower()
        if letters not in NEVER_NAMES and letters not in ("mrn",):
            spans.append(Span(NAME, m.start(), m.end()))
    return spans


def _month_context(text: str, m: re.Match) -> bool:
    """'May'/'June'/'April' next to a number is a date, not a name."""
    return bool(re.fullmatch(_MONTHS_FULL, m.group(0))) and bool(
        re.match(r"\s+(?:\d|the\b|" + _ORDS + ")", text[m.end():], re.I))


def _name_extent(words: str, lower_ok: bool = False) -> int:
    """Length of the name at the start of ``words``: the first word, then up to two capitalised words (or,
    ``lower_ok``, census surnames in lower case: "my name is jane doe")."""
    parts = list(re.finditer(r"[A-Za-z]+(?:['’-][A-Za-z]+)?|[^\sA-Za-z]", words))[:3]
    end = parts[0].end()
    for p in parts[1:]:
        w = p.group(0)
        if w.lower() in NEVER_NAMES or w.lower() in NOT_NAMES_AFTER_CUE:
            break
        if re.fullmatch(_WORD, w) or (lower_ok and w.lower() in last_names()):
            end = p.end()
        else:
            break
    return end


def _digit_run_spans(text: str) -> list[Span]:
    """Five or more spoken digits in a row (an MRN or a phone number read out), unless it is a count."""
    spans = []
    tokens = list(_NUM_TOKEN.finditer(text))
    i = 0
    while i < len(tokens):
        j = i
        while j + 1 < len(tokens) and re.fullmatch(r"[\s,.-]*", text[tokens[j].end():tokens[j + 1].start()]):
            j += 1
        run = tokens[i:j + 1]
        digits = _spoken_digits([t.group(0).lower() for t in run])
        if len(digits) >= MIN_ID_DIGITS and not _is_count(run):
            spans.append(Span(ID, run[0].start(), run[-1].end()))
        i = j + 1
    return spans


def _spoken_digits(words: list[str]) -> list[int]:
    out: list[int] = []
    repeat = 1
    for w in words:
        if w in ("double", "triple"):
            repeat = 2 if w == "double" else 3
            continue
        n = _NUMBER_WORD.get(w)
        if n is None:
            continue
        out.extend([int(c) for c in str(n)] * repeat)
        repeat = 1
    return out


def _is_count(run: list[re.Match]) -> bool:
    """Spoken numbers going up or down by one ("one, two, three, four, five"): counting, not an id."""
    values = [_NUMBER_WORD.get(t.group(0).lower()) for t in run]
    if None in values:
        return False
    steps = {b - a for a, b in zip(values, values[1:])}
    return steps in ({1}, {-1})


def _age_spans(text: str) -> list[Span]:
    spans = []
    for m in _AGE.finditer(text):
        value = _number_value(m.group(1) or m.group(2))
        if value is not None and value > OLDEST_AGE_KEPT:
            spans.append(Span(AGE, m.start(), m.end()))
    return spans


def _number_value(s: str) -> int | None:
    s = s.lower().replace("-", " ").replace(" and ", " ")
    if s.isdigit():
        return int(s)
    total = 0
    for w in s.split():
        if w == "hundred":
            total = max(total, 1) * 100
        elif w in _NUMBER_WORD:
            total += _NUMBER_WORD[w]
        else:
            return None
    return total


def find(text: str) -> list[Span]:
    """Every identifier span in ``text``, merged (overlaps joined, the higher-priority kind kept)."""
    # a pattern with a group "v" replaces only that (the cue before it stays: "MRN [ID]")
    raw = [Span(kind, m.start("v"), m.end("v")) if "v" in rx.groupindex else Span(kind, m.start(), m.end())
           for kind, rx in _COMPILED for m in rx.finditer(text)]
    raw += _age_spans(text) + _digit_run_spans(text) + _name_spans(text)
    raw = [_trim(text, s) for s in raw]
    raw = [s for s in raw if s.end > s.start]
    raw.sort(key=lambda s: (s.start, -s.end))
    merged: list[Span] = []
    for s in raw:
        if merged and s.start < merged[-1].end:
            last = merged[-1]
            kind = min(last.kind, s.kind, key=PRIORITY.index)
            merged[-1] = Span(kind, last.start, max(last.end, s.end))
        else:
            merged.append(s)
    return merged


def _trim(text: str, s: Span) -> Span:
    start, end = s.start, s.end
    while end > start and text[end - 1] in " \t,.-;:":
        end -= 1
    while start < end and text[start] in " \t,":
        start += 1
    return Span(s.kind, start, end)


def scrub(text: str) -> Scrubbed:
    """``text`` with every identifier replaced by its placeholder, and the spans replaced."""
    spans = find(text or "")
    out, at = [], 0
    for s in spans:
        out.append(text[at:s.start])
        out.append(PLACEHOLDERS[s.kind])
        at = s.end
    out.append((text or "")[at:])
    return Scrubbed("".join(out), tuple(spans))


def scrub_text(text: str | None) -> str | None:
    """``scrub(text).text``, passing None through (table cells)."""
    return None if text is None else scrub(text).text
