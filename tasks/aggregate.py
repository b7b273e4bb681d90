"""aggregate: window answers -> one decision per recording x feature x arm x model.

Input: ``data_dir/09_query/answers.parquet`` (table ``answers``).

Rules (``aggregate.rule``):

- ``any_yes`` (the study): present if at least one window answered yes;
- ``k_of_n``: present if at least ``k`` windows answered yes;
- ``mean_prob``: present if the mean P(yes) over the windows that carry one
  is at least ``threshold`` (needs a backend that records P(yes)).

Only ``yes``/``no`` answers are votes; ``unparsed``, ``refused``, ``truncated``,
``skipped`` and ``not_assessable`` are never read as either.  A recording x
feature x arm none of whose windows had media (every answer ``not_assessable``:
no face, no pose, no audio) is *not assessable*: ``predicted`` is null, never
"no", and ``aggregate.json`` counts it per arm; one with some assessable windows
is decided over those, its ``n_not_assessable`` counting the others.  A
recording x feature whose assessable windows gave no vote at all is predicted
absent (no window showed the feature) and counted as *undecided* in
``aggregate.json``, so the gap is visible.  Arms that had no model
(``query.*.backend: none``) produce no prediction.

Outputs (under ``out_dir`` = ``data_dir/10_aggregate``):

- ``predictions.parquet`` (table ``predictions``): predicted (null: not
  assessable), score (share of yes votes; mean P(yes) for mean_prob; 0 when
  not assessable), n_windows (votes), n_yes, evidence_windows (the window
  indices that said yes), n_not_assessable (windows without media);
- ``evidence.parquet`` (table ``evidence``): one row per yes window with its
  justification and P(yes);
- ``aggregate.json``: counts per arm, undecided count, the random-weights banner.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tasks import layout
from tasks.contract import Stage
from tasks.layout import rel
from tasks.answers import NO_MODEL, NOT_ASSESSABLE, RANDOM_BANNER, RANDOM_TAG, SCORED
from tasks.atomic import atomic_write_text
from tasks.errors import SemioflowError
from tasks.params import AggregateParams, Params
from tasks.schema import read_table, write_table



def decide(votes: list[dict], params: AggregateParams) -> tuple[bool, float]:
    """(predicted, score) from one recording x feature x arm's scored answers (status yes/no)."""
    n_yes = sum(v["status"] == "yes" for v in votes)
    if params.rule == "mean_prob":
        probs = [v["yes_prob"] for v in votes if v["yes_prob"] is not None]
        if not probs:
            return False, 0.0
        score = sum(probs) / len(probs)
        return score >= params.threshold, score
    share = n_yes / len(votes) if votes else 0.0
    need = 1 if params.rule == "any_yes" else params.k
    return n_yes >= need, share


def aggregate(answers: list[dict], params: AggregateParams) -> tuple[list[dict], list[dict], dict]:
    """(prediction rows, evidence rows, summary) from answer rows (see module doc for the rules)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for a in answers:
        if a["model_id"] == NO_MODEL:
            continue
        groups[(a["recording_id"], a["feature_id"], a["arm"], a["model_id"])].append(a)
    if params.rule == "mean_prob" and groups and not any(a["yes_prob"] is not None for a in answers):
        raise SemioflowError("aggregate.rule mean_prob needs P(yes), but no answer carries one: enable "
                             "query.*.logprobs on a server that returns logprobs, or use the local backend")
    preds, evidence = [], []
    undecided = 0
    per_arm: dict[str, dict[str, int]] = defaultdict(lambda: {"predictions": 0, "positive": 0, "not_assessable": 0})
    for (rid, fid, arm, model_id), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r["window_index"])
        votes = [r for r in rows if r["status"] in SCORED]
        blind = sum(r["status"] == NOT_ASSESSABLE for r in rows)
        predicted, score = decide(votes, params)
        if blind == len(rows):  # no window had media: not asked, so not "no"
            predicted, score = None, 0.0
        yes = [r for r in votes if r["status"] == "yes"]
        undecided += not votes and predicted is not None
        per_arm[arm]["predictions"] += 1
        per_arm[arm]["positive"] += bool(predicted)
        per_arm[arm]["not_assessable"] += predicted is None
        preds.append(dict(recording_id=rid, feature_id=fid, arm=arm, model_id=model_id, rule=params.rule,
                          predicted=predicted, score=float(score), n_windows=len(votes), n_yes=len(yes),
                          evidence_windows=[int(r["window_index"]) for r in yes], n_not_assessable=blind))
        evidence += [dict(recording_id=rid, feature_id=fid, arm=arm, model_id=model_id,
                          window_index=int(r["window_index"]), yes_prob=r["yes_prob"],
                          justification=r["justification"]) for r in yes]
    models = sorted({k[3] for k in groups})
    random = any(m.endswith(RANDOM_TAG) for m in models)
    summary = {"rule": params.rule, "predictions": len(preds), "undecided": undecided,
               "not_assessable": sum(p["predicted"] is None for p in preds), "arms": dict(per_arm),
               "models": models, "random_weights": random, "banner": RANDOM_BANNER if random else ""}
    return preds, evidence, summary


def run(data_dir: Path, out_dir: Path, params: Params) -> dict:
    """The aggregate stage: reads the query answers, writes predictions, evidence and a summary."""
    answers = read_table("answers", layout.path(data_dir, "query", "answers.parquet")).to_pylist()
    preds, evidence, summary = aggregate(answers, params.aggregate)
    out_dir = Path(out_dir)
    write_table("predictions", preds, out_dir / "predictions.parquet")
    write_table("evidence", evidence, out_dir / "evidence.parquet")
    atomic_write_text(out_dir / "aggregate.json", json.dumps(summary, indent=2, sort_keys=True))
    return summary


STAGE = Stage("aggregate", "cohort", run, "window answers -> one answer per recording, feature and arm (any yes)",
              inputs=(rel("query", "answers.parquet"),))
