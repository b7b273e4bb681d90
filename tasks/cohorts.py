"""Which cohort each recording belongs to (the manifest's ``cohort``: the inbox it came from).

Every recording goes through ingest and de-identification; after that a
per-recording stage sees the recordings of its own cohort only
(``Stage.cohort``), and a cohort stage that reads a shared table filters it here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tasks import layout
from tasks.schema import read_table

MANIFEST = layout.rel("ingest", "manifest.parquet")


def cohort_of(data_dir: Path) -> dict[str, str]:
    """Recording id -> cohort, for every accepted recording."""
    rows = read_table("manifest", Path(data_dir) / MANIFEST).select(["recording_id", "cohort"]).to_pylist()
    return {r["recording_id"]: r["cohort"] for r in rows}


def members(data_dir: Path, cohort: str, recording_ids: Iterable[str]) -> list[str]:
    """The ``recording_ids`` of ``cohort``, sorted."""
    of = cohort_of(data_dir)
    return sorted(r for r in recording_ids if of.get(r) == cohort)
