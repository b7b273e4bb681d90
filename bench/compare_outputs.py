"""Compare two data folders (e.g. the phantom demo's before and after a refactor): tables by content, media by bytes.

Usage: python bench/compare_outputs.py BEFORE_DATA_DIR AFTER_DATA_DIR [--moved OLD=NEW ...] [--unordered]

``--moved OLD=NEW``: the file ``OLD`` or the files under ``OLD/`` in BEFORE are
compared with ``NEW`` (the same names under ``NEW/``) in AFTER (a refactor
that moved outputs);
``--unordered``: table rows are compared as a multiset (a refactor that
changed the row order of a gathered table).

Both runs must use the same site key (``.semioflow/id_key``) so recording ids
match.  What records *when* or *how long* something ran is left out: table
columns ending in ``_at`` and the id maps' file ``mtime_ns``, JSON keys
``seconds`` and ``key`` (a code-hash cache key).  Parquet tables are compared
row by row, JSON by parsed content, torch files (``.pt``) by their tensors
(``torch.save`` bytes differ between equal saves), every other file byte for
byte.  Cache markers (``done/``) and response caches are not outputs and are
skipped.  Prints counts and every difference; exits 1 when an output differs
or is missing on one side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

SKIP_PARTS = ("done", "cache", "clips_cache")  # markers and caches, not outputs
WHEN_COLUMNS = ("_at", "mtime_ns")  # column-name suffixes that say when a row (or its source file) was written
WHEN_KEYS = ("seconds", "key")  # JSON keys: how long a step took; a cache key (it hashes the code)
SKIP_FILES = ("skipped.json",)


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name not in SKIP_FILES
            and not set(p.relative_to(root).parts) & set(SKIP_PARTS)}


def _table(path: Path, unordered: bool = False) -> list[dict]:
    t = pq.read_table(path)
    keep = [c for c in t.column_names if not c.endswith(WHEN_COLUMNS)]
    rows = t.select(keep).to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str)) if unordered else rows


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json(path: Path):
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in WHEN_KEYS}
        return [strip(x) for x in v] if isinstance(v, list) else v

    return strip(json.loads(path.read_text()))


def _same_torch(a: Path, b: Path) -> bool:
    import torch

    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.shape == y.shape and bool(torch.equal(x, y))
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return isinstance(y, (list, tuple)) and len(x) == len(y) and all(map(same, x, y))
        return x == y

    return same(torch.load(a, map_location="cpu", weights_only=False), torch.load(b, map_location="cpu",
                                                                                  weights_only=False))


def _moved(files: dict[str, Path], moved: list[tuple[str, str]]) -> dict[str, Path]:
    out = {}
    for rel, path in files.items():
        for old, new in moved:
            old, new = old.rstrip("/"), new.rstrip("/")
            if rel == old or rel.startswith(old + "/"):
                rel = new + rel[len(old):]
                break
        out[rel] = path
    return out


def compare(before: Path, after: Path, *, moved: list[tuple[str, str]] = (),
            unordered: bool = False) -> tuple[dict[str, int], list[str]]:
    """(counts by kind, differences) between two data folders (``moved``: BEFORE prefix -> AFTER prefix)."""
    a, b = _moved(_files(before), list(moved)), _files(after)
    diffs = [f"only before: {k}" for k in sorted(set(a) - set(b))] + [f"only after: {k}" for k in sorted(set(b) - set(a))]
    counts = {"tables": 0, "media": 0, "other": 0}  # media: video, audio, model and feature tensors
    for rel in sorted(set(a) & set(b)):
        if rel.endswith(".parquet"):
            counts["tables"] += 1
            same = _table(a[rel], unordered) == _table(b[rel], unordered)
        elif rel.endswith(".json"):
            counts["other"] += 1
            same = _json(a[rel]) == _json(b[rel])
        elif rel.endswith(".pt"):
            counts["media"] += 1
            same = _same_torch(a[rel], b[rel])
        else:
            counts["media" if rel.endswith((".mp4", ".wav")) else "other"] += 1  # html, md, csv, txt: bytes
            same = _digest(a[rel]) == _digest(b[rel])
        if not same:
            diffs.append(f"differs: {rel}")
    return counts, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--moved", action="append", default=[], metavar="OLD=NEW",
                    help="outputs under OLD/ in BEFORE live under NEW/ in AFTER")
    ap.add_argument("--unordered", action="store_true", help="compare table rows as a multiset")
    args = ap.parse_args()
    moved = [tuple(m.split("=", 1)) for m in args.moved]
    counts, diffs = compare(args.before, args.after, moved=moved, unordered=args.unordered)
    print(f"compared {counts['tables']} tables and {counts['other']} JSON/text files (by content), "
          f"{counts['media']} media and tensor files")
    for d in diffs:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} difference(s)")
    raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
    main()
