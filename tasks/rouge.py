"""ROUGE-L: how much of one text's word sequence another keeps in order (no model, no download).

Lin (2004): the longest common subsequence (LCS) of the two token sequences;
recall = LCS / reference length, precision = LCS / candidate length, and the
F-measure of the two (beta = 1).  Tokens are lower-case runs of letters and
digits, so punctuation and case do not count.  Used for S³ Task 2's lexical
part: model justifications against annotators' justifications.
"""

from __future__ import annotations

import re

TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return TOKEN.findall((text or "").lower())


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of ``candidate`` against ``reference`` in [0, 1] (0 when either has no token)."""
    c, r = tokens(candidate), tokens(reference)
    n = lcs(c, r)
    if n == 0:
        return 0.0
    precision, recall = n / len(c), n / len(r)
    return 2 * precision * recall / (precision + recall)
