"""Spoken identifiers for the phantom: a patient asked for name, date of birth and record number answers.

A share of recordings (``SPOKEN_SHARE``, where espeak-ng is installed)
carries one ``spoken_phi`` sound clip (``tasks/synth/sound.py``) saying, in
words as a person would: "My name is Jane Doe. I was born on March fourth,
nineteen sixty-one. My record number is four four seven one nine zero
three."  What was said, and each identifier in its written forms, is truth
(table ``spoken``): the privacy tests grep every output for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPOKEN_SHARE = 0.5  # share of recordings where the patient says identifiers
FIRST = ("Jane", "Robert", "Maria", "Thomas", "Elsa", "Marco", "Linda", "Peter")
LAST = ("Doe", "Whitaker", "Garcia", "Lindqvist", "Okafor", "Rossi", "Brennan", "Castillo")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
            "eighteenth", "nineteenth", "twentieth", "twenty-first", "twenty-second", "twenty-third",
            "twenty-fourth", "twenty-fifth", "twenty-sixth", "twenty-seventh", "twenty-eighth")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen")
WORDS_PER_S = 2.1  # espeak-ng at 140 words per minute, with pauses at the full stops


def _two_digits(n: int) -> str:
    if n < 10:
        return "oh " + DIGITS[n]
    if n < 20:
        return TEENS[n - 10]
    return TENS[n // 10] + ("" if n % 10 == 0 else "-" + DIGITS[n % 10])


@dataclass(frozen=True)
class SpokenIdentity:
    """What the patient says, and the identifiers in the forms an output could carry them."""

    first: str
    last: str
    month: int
    day: int
    year: int
    mrn: str  # seven digits

    @property
    def text(self) -> str:
        year = f"nineteen {_two_digits(self.year % 100)}"
        return (f"My name is {self.first} {self.last}. I was born on {MONTHS[self.month - 1]} "
                f"{ORDINALS[self.day - 1]}, {year}. My record number is "
                f"{' '.join(DIGITS[int(d)] for d in self.mrn)}.")

    @property
    def duration_s(self) -> float:
        return round(len(self.text.split()) / WORDS_PER_S + 1.0, 3)

    def identifiers(self) -> dict[str, str]:
        """Identifier kind -> a string no output outside ``private/`` may contain (case-insensitive)."""
        return {"first_name": self.first, "last_name": self.last, "mrn": self.mrn,
                "mrn_spoken": " ".join(DIGITS[int(d)] for d in self.mrn[:4]),
                "birth_year": str(self.year), "birth_date": f"{MONTHS[self.month - 1]} {ORDINALS[self.day - 1]}",
                # the same date as a recogniser writes it: Whisper hears "November twenty-sixth" as "November 26"
                "birth_date_digits": f"{MONTHS[self.month - 1]} {self.day}"}


def plan(rng: np.random.Generator) -> SpokenIdentity | None:
    """The spoken identity of one recording (None for ``1 - SPOKEN_SHARE`` of them)."""
    if rng.random() >= SPOKEN_SHARE:
        return None
    return SpokenIdentity(first=FIRST[int(rng.integers(len(FIRST)))], last=LAST[int(rng.integers(len(LAST)))],
                          month=int(rng.integers(1, 13)), day=int(rng.integers(1, 29)),
                          year=int(rng.integers(1931, 2000)), mrn=str(int(rng.integers(1_000_000, 9_999_999))))
