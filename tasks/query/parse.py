"""Replies -> answers: yes/no, justification and a status that is never scored for anything else.

A justification the model gave but left empty or whitespace-only (a JSON ``justification`` of spaces or
newlines, or nothing after a constrained yes/no) makes the reply ``unparsed``: the words a reply is asked for
are missing, which is what a degenerate decode (a random-weight smoke model's newlines) looks like, so the
yes/no beside them is not read as an answer.  A plain-text "no" with no justification at all stays a terse
answer, as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


from tasks.answers import SCORED


SINGLE_PREFIX = '{"present": "'  # local backends continue this, so the first token is yes/no
JUSTIFICATION_PREFIX = '", "justification": "'  # forced after a constrained yes/no
CUT_MARK = " [cut at max_tokens]"  # ends a constrained answer's justification that hit the token cap
ANSWER_SCHEMA = {"type": "object", "properties": {"present": {"type": "string", "enum": ["yes", "no"]},
                                                   "justification": {"type": "string"}},
                 "required": ["present", "justification"], "additionalProperties": False}
_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i am (?:not able|unable)|i'm (?:not able|unable)|"
                      r"i (?:will not|won't)|cannot (?:help|assist|provide|comply)|as an ai)\b", re.IGNORECASE)
# A hedge is not an answer either, wherever it stands ("Yes, no wait: ...", "no jerks, though it is unclear").
_HEDGE = re.compile(r"\b(no wait|not sure|unsure|uncertain|unclear|(?:cannot|can't|unable to|not possible to|hard to|"
                    r"difficult to) (?:determine|tell|say|assess|judge)|cannot be (?:determined|assessed)|"
                    r"insufficient (?:information|evidence))\b", re.IGNORECASE)
_YES_NO = re.compile(r"^\W*(yes|no)\b[\s.,:;!-]*(.*)$", re.IGNORECASE | re.DOTALL)
_OPPOSITE = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)  # "Yes, no ...": two answers are none
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})
REFUSAL_FINISH = "refusal"  # finish_reason of a reply the server marked as a refusal (OpenAI message.refusal)


# ---- answers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    status: str  # yes | no | unparsed | refused | truncated
    present: bool | None
    justification: str | None


def _json_object(text: str) -> dict | None:
    s = text.strip()
    s = re.sub(r"^```(?:json)?\s*|\s*```$", "", s)
    start, end = s.find("{"), s.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(s[start:end + 1])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _present(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return value.strip().lower() in ("yes", "true")
    return None


def _one(obj) -> Parsed | None:
    if not isinstance(obj, dict):
        return None
    present = _present(obj.get("present", obj.get("answer")))  # some models name the field "answer"
    if present is None:
        return None
    just = obj.get("justification")
    if just is not None and not _printable(str(just)):
        return Parsed("unparsed", None, None)  # a justification given blank: degenerate output, no answer
    return Parsed("yes" if present else "no", present, _printable(str(just)) if just is not None else None)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")  # not text: HTML, Parquet viewers choke on them


def _printable(text: str) -> str:
    """A justification as shown: control characters and replacement marks dropped (raw_text keeps all)."""
    return _CONTROL.sub("", text).strip()


def _constrained(text: str, finish_reason: str | None, answer: str) -> Parsed:
    """A constrained yes/no: the word is known; the justification is whatever follows it (maybe cut)."""
    obj = _json_object(text)
    if obj is not None and isinstance(obj.get("justification"), str):
        just = _printable(obj["justification"])
    else:
        just = text.split(JUSTIFICATION_PREFIX, 1)[1] if JUSTIFICATION_PREFIX in text else ""
        just = _printable(re.sub(r'"\s*}?\s*$', "", just))
    if _REFUSAL.search(just):  # forced to pick a word, the model refused in its own words: not an answer
        return Parsed("refused", None, None)
    if not just:  # the word was forced; what the model wrote after it is nothing but whitespace: no answer
        return Parsed("unparsed", None, None)
    if finish_reason == "length":
        just = (just + CUT_MARK).strip()
    return Parsed(answer, answer == "yes", just or None)


def parse_answer(text: str, finish_reason: str | None, feature_ids: tuple[str, ...], *, batched: bool,
                 answer: str | None = None) -> dict[str, Parsed]:
    """Per feature id: the parsed answer, or why the text is not one (never scored then).

    Single mode accepts the JSON object, or plain text starting with yes/no.
    Batched mode needs one JSON object keyed by feature id; a missing key is unparsed.
    ``answer`` ("yes" | "no"): chosen by constrained decoding (single mode); it stands even when the
    justification after it was cut, unless that justification is a refusal.
    """
    text = (text or "").translate(_APOSTROPHES)  # a curly apostrophe is an apostrophe ("I can’t")
    if finish_reason == REFUSAL_FINISH:
        return {fid: Parsed("refused", None, None) for fid in feature_ids}
    if answer in SCORED and not batched:
        return {feature_ids[0]: _vetted(_constrained(text, finish_reason, answer), text)}
    if finish_reason == "length":
        return {fid: Parsed("truncated", None, None) for fid in feature_ids}
    obj = _json_object(text or "")
    if batched:
        got = {fid: _one(obj.get(fid)) if obj else None for fid in feature_ids}
    else:
        one = _one(obj)
        if one is None and obj is None:
            m = _YES_NO.match(text)
            if m:
                yes = m.group(1).lower() == "yes"
                rest = m.group(2)
                opposite = _OPPOSITE.match(rest)
                if opposite and (opposite.group(1).lower() == "yes") != yes:
                    return {feature_ids[0]: Parsed("unparsed", None, None)}
                one = Parsed("yes" if yes else "no", yes, rest.strip() or None)
        got = {feature_ids[0]: _vetted(one, text) if one is not None else None}
    if batched:  # one text answers several features: each is judged by its own justification
        got = {fid: _vetted(p, p.justification or "") if p is not None else None for fid, p in got.items()}
    fallback = "refused" if _REFUSAL.search(text) else "unparsed"
    return {fid: p if p is not None else Parsed(fallback, None, None) for fid, p in got.items()}


def _vetted(p: Parsed, text: str) -> Parsed:
    """A yes/no whose text refuses or hedges anywhere is no answer: refused or unparsed (never scored)."""
    if p.status not in SCORED:
        return p
    where = f"{text}\n{p.justification or ''}"
    if _REFUSAL.search(where):
        return Parsed("refused", None, None)
    if _HEDGE.search(where):
        return Parsed("unparsed", None, None)
    return p


