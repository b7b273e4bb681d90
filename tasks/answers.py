"""What an answer may be: the statuses that score, and the marks of answers that are not clinical results.

Shared by the stages that write answers (query) and those that read them
(aggregate, report, review); no stage imports another for these.
"""

from __future__ import annotations

SCORED = ("yes", "no")  # the only statuses that count as an answer
UNSCORED = ("unparsed", "refused", "truncated")  # the model replied, but not with a usable yes/no
NOT_ASSESSABLE = "not_assessable"  # the window x arm had no media (no face, no pose, no audio): never asked
SKIPPED = "skipped"  # the arm had no model (query.*.backend none)
NO_MODEL = "none"  # model id (and backend) of answers recorded while an arm had no backend
RANDOM_TAG = "+random-weights"  # appended to the model id of a random-weight smoke model
RANDOM_BANNER = "RANDOM-WEIGHT SMOKE MODEL: these answers are not clinical results"


RANDOM_MARK = RANDOM_TAG[1:]  # also inside ids built on a smoke model's id (the baselines': "<id>-<mode>")


def is_random(model_id: str) -> bool:
    """True for an id of (or built on) a random-weight smoke model."""
    return RANDOM_MARK in model_id
