"""tasks.phi: identifiers out of free text, measured on the planted test set (tests/phi_sentences.py).

Recall: a planted identifier counts as removed when every letter and digit of
it lies inside a replaced span.  Over-removal: words outside the planted
identifier (and every word of the clinical sentences) that were replaced.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tasks.phi import KINDS, PLACEHOLDERS, find, scrub
from tests.phi_sentences import CLINICAL, planted

RECALL_GOAL = 0.98  # the issue's goal: >= 98 % of identifiers removed
OVER_REMOVAL_LIMIT = 0.01  # share of clinical / surrounding words replaced
WORD = re.compile(r"[A-Za-z0-9']+")


def _covered(text: str) -> set[int]:
    return {i for s in find(text) for i in range(s.start, s.end)}


def test_the_test_set_is_large_and_varied():
    cases = planted()
    assert len(cases) >= 100
    assert set(Counter(kind for _, kind, _, _ in cases)) == set(KINDS)
    assert len(CLINICAL) >= 30


def test_recall_and_over_removal_on_the_planted_set():
    cases = planted()
    missed, per_kind = [], Counter()
    around = around_lost = 0
    for sentence, kind, start, end in cases:
        covered = _covered(sentence)
        if not all(i in covered for i in range(start, end) if sentence[i].isalnum()):
            missed.append((kind, sentence, scrub(sentence).text))
            per_kind[kind] += 1
        for m in WORD.finditer(sentence):
            if m.end() <= start or m.start() >= end:
                around += 1
                around_lost += any(i in covered for i in range(m.start(), m.end()))
    clinical = clinical_lost = 0
    for sentence in CLINICAL:
        covered = _covered(sentence)
        for m in WORD.finditer(sentence):
            clinical += 1
            clinical_lost += any(i in covered for i in range(m.start(), m.end()))
    recall = 1 - len(missed) / len(cases)
    print(f"{len(cases)} planted identifiers: recall {recall:.3f}; missed by kind {dict(per_kind)}; "
          f"words wrongly removed: clinical {clinical_lost}/{clinical}, around identifiers {around_lost}/{around}")
    for m in missed:
        print("missed:", m)
    assert recall >= RECALL_GOAL, missed
    assert clinical_lost / clinical <= OVER_REMOVAL_LIMIT
    assert around_lost / around <= OVER_REMOVAL_LIMIT


def test_the_issue_sentence_keeps_nothing_identifying():
    text = ("My name is Jane Doe, date of birth March fourth 1961, MRN 4471903. "
            "My name is Jane Doe, date of birth March fourth nineteen sixty-one, MRN four four seven one nine oh three.")
    out = scrub(text).text
    for planted_part in ("Jane", "Doe", "March", "fourth", "1961", "nineteen", "sixty", "4471903", "four four seven"):
        assert planted_part not in out, out
    assert out.count("[NAME]") == 2 and out.count("[DATE]") == 2 and out.count("[ID]") == 2
    assert "date of birth" in out and "MRN" in out  # the cue words stay: the text still reads


@pytest.mark.parametrize("text", [
    "Can you squeeze my hand? One, two, three, four, five.",  # a count, not an id
    "Will you raise your arm? You may feel tired. Hope you rest.",  # names that are words, at a sentence start
    "Give Keppra two milligrams, the EEG is running, ten thirty now.",
    "She's ninety years young? No, eighty-nine years old.",  # 89 is kept; over 89 is an identifier
])
def test_clinical_text_is_left_alone(text):
    assert scrub(text).text == text


def test_placeholders_are_a_closed_set_and_output_is_stable():
    text = "Hi Maria, call 555-123-4567 or maria.g@gmail.com; she is 95 years old, at 12 Oak Street since 2019."
    first = scrub(text)
    assert first == scrub(text)
    assert set(re.findall(r"\[[A-Z]+\]", first.text)) <= set(PLACEHOLDERS.values())
    assert set(first.kinds) == {"NAME", "PHONE", "EMAIL", "AGE", "ADDRESS", "DATE"}
    assert scrub(first.text).text == first.text  # scrubbing twice changes nothing
