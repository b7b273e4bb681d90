"""The stage contract: what every stage module declares, once, as ``STAGE = Stage(...)``.

A stage is one of three kinds:

* ``source`` (ingest): reads the inbox named in params, always runs;
  ``run(data_dir, out_dir, params, inbox) -> dict``.
* ``recording``: one run per recording of its ``cohort`` (``tasks.schema.COHORTS``;
  None: every cohort) that came through ``after``;
  ``run(recording_id, data_dir, out_dir, params) -> dict``.  Its per-recording
  files carry the id in their names; ``tables`` gathers them into stage tables.
* ``cohort``: one run over the whole cohort; ``run(data_dir, out_dir, params) -> dict``.

Every ``run`` takes the whole ``Params`` and returns a small JSON-able dict
(ids, counts, a ``line``): never media, names or paths.  What a stage reads is
declared here so that the cache key (``tasks.cache``), the DVC stage
(``semioflow generate``) and the README's stage table all follow from one place:

* ``inputs``: data-dir-relative files or folders (``tasks.layout.rel``); for a
  per-recording stage they name one recording's files with ``{rid}``.
* ``optional``: inputs that may be absent (hashed as absent; a cohort stage
  says "not run yet" without them); an ``external`` key listed here may be
  unset, so it is no DVC dependency.
* ``external``: params keys (``"folds.labels"``) whose values are paths
  outside the data dir.
* ``params``: the params sections in the key (default: the stage's own), or
  single values (``"base.seed"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import pyarrow as pa

from tasks import layout
from tasks.atomic import atomic_write_text
from tasks.params import Params, to_dict
from tasks.schema import COHORTS, SEIZURE, concat_write

Kind = Literal["source", "recording", "cohort"]
KINDS = ("source", "recording", "cohort")
SKIPPED = "skipped.json"  # written instead of outputs when a stage had no input (a site without a gait study)
STATE = "state.json"  # recording stages: what the tables hold (recordings, stale ids kept from a failed rerun)


@dataclass(frozen=True)
class Table:
    """A stage table gathered from per-recording files: ``<folder>/<rid>.parquet`` -> ``<file>``."""

    schema: str  # table name in tasks.schema
    folder: str  # per-recording files, inside the stage folder
    file: str = ""  # the stage table's file name (default ``<schema>.parquet``)

    @property
    def path(self) -> str:
        return self.file or f"{self.schema}.parquet"


@dataclass(frozen=True)
class Out:
    """A DVC output of the stage (default: the whole stage folder, persisted)."""

    path: str  # inside the stage folder ("" = the folder itself)
    section: Literal["outs", "metrics", "plots"] = "outs"
    options: dict[str, Any] = field(default_factory=dict)  # extra DVC keys (plots: x, y, template; cache)


@dataclass(frozen=True)
class Stage:
    """One stage's declaration (see the module doc)."""

    name: str
    kind: Kind
    run: Callable[..., dict]
    summary: str  # one line for the README's stage table
    inputs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    external: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    after: str = ""  # recording stages: recordings that came through this stage
    cohort: str | None = SEIZURE  # recording stages: the cohort whose recordings they run on (None: every cohort)
    tables: tuple[Table, ...] = ()
    # recording stages: extra stage-level outputs written after the tables (e.g. quarantine rows)
    finish: Callable[[Path, list[str]], None] | None = None
    # recording stages: extra cache-key material from params (the identity of the model files a path names)
    identity: Callable[[Params], str] | None = None
    # recording stages: checked once before any recording runs; returns lines to print (raises ConfigError)
    preflight: Callable[[Params], list[str]] | None = None
    # recording stages: run recordings one by one in the flow process (one model loaded once, e.g. on a GPU)
    in_process: Callable[[Params], bool] | None = None
    # model stages: the device their model runs on (auto | cpu | cuda[:N]; None: no model in this run), which
    # says whether a Dask run sends them to GPU workers (flows/cluster.py)
    device: Callable[[Params], str | None] | None = None
    assets: tuple[str, ...] = ()  # repository files the stage reads besides code (templates), for DVC
    outs: tuple[Out, ...] = (Out(""),)
    note: str = ""  # why the DVC stage looks as it does (a comment in dvc.yaml)

    def __post_init__(self) -> None:
        if self.name not in layout.STAGES:
            raise ValueError(f"stage {self.name!r} is not in tasks.layout.STAGES")
        if self.kind not in KINDS:
            raise ValueError(f"stage {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "recording") != bool(self.after):
            raise ValueError(f"stage {self.name!r}: 'after' is for recording stages, and they need it")
        if self.cohort is not None and self.cohort not in COHORTS:
            raise ValueError(f"stage {self.name!r}: cohort {self.cohort!r} is not one of {COHORTS}")
        unknown = [k for k in self.external if k.count(".") != 1]
        if unknown:
            raise ValueError(f"stage {self.name!r}: external inputs are 'section.key' params keys: {unknown}")

    @property
    def data_inputs(self) -> tuple[str, ...]:
        """Every data-dir input, required then optional (the optional ``external`` keys left out)."""
        return tuple(dict.fromkeys(self.inputs + tuple(o for o in self.optional if o not in self.external)))

    @property
    def sections(self) -> tuple[str, ...]:
        """The params sections (or ``section.key`` values, e.g. ``base.seed``) in the stage's cache key.

        Never all of ``base``: how a run is executed (``base.runner``,
        ``base.workers``) does not change what it writes."""
        return self.params or (self.name,)

    def external_paths(self, params: Params) -> tuple[Path, ...]:
        """The paths the ``external`` params keys name (empty values are no input)."""
        values = to_dict(params)
        paths = []
        for key in self.external:
            section, name = key.split(".")
            value = values[section][name]
            if value:
                paths.append(Path(value))
        return tuple(paths)

    def collect(self, out_dir: Path, recording_ids: list[str]) -> pa.Table | None:
        """The stage tables from the per-recording files of ``recording_ids``; returns the first.

        The runners (``tasks.cache.collect``) pass every recording with a complete result on disk, a failed
        rerun's last good one included, so a failed run never empties a table."""
        ids = sorted(recording_ids)
        first = None
        for t in self.tables:
            table = concat_write(t.schema, [Path(out_dir) / t.folder / f"{rid}.parquet" for rid in ids],
                                 Path(out_dir) / t.path)
            first = table if first is None else first
        if self.finish is not None:
            self.finish(Path(out_dir), ids)
        return first


def skip(out_dir: Path, reason: str) -> dict:
    """Record that a stage had nothing to do (``skipped.json``); returns its summary."""
    summary = {"skipped": reason, "line": f"{Path(out_dir).name[3:]}: skipped: {reason}"}
    atomic_write_text(Path(out_dir) / SKIPPED, json.dumps(summary, indent=2))
    return summary
