"""Compare two data folders (e.g. the phantom demo's before and after a refactor): tables by content, media by bytes.

Usage: python bench/compare_outputs.py BEFORE_DATA_DIR AFTER_DATA_DIR

Both runs must use the same site key (``.semioflow/id_key``) so recording ids
match.  Parquet tables are compared row by row after dropping columns that
record when something ran (``*_at`` timestamps); every other file byte for
byte.  Cache markers (``done/``), response caches and Prefect state are not
outputs and are skipped.  Prints counts and every difference; exits 1 when
an output differs or is missing on one side.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pyarrow.parquet as pq

SKIP_PARTS = ("done", "cache", "clips_cache")  # markers and caches, not outputs
WHEN_COLUMNS = ("_at",)  # column-name suffixes that say when a row was written
SKIP_FILES = ("skipped.json",)


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name not in SKIP_FILES
            and not set(p.relative_to(root).parts) & set(SKIP_PARTS)}


def _table(path: Path) -> list[dict]:
    t = pq.read_table(path)
    keep = [c for c in t.column_names if not c.endswith(WHEN_COLUMNS)]
    return t.select(keep).to_pylist()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(before: Path, after: Path) -> tuple[dict[str, int], list[str]]:
    """(counts by kind, differences) between two data folders."""
    a, b = _files(before), _files(after)
    diffs = [f"only before: {k}" for k in sorted(set(a) - set(b))] + [f"only after: {k}" for k in sorted(set(b) - set(a))]
    counts = {"tables": 0, "media": 0, "other": 0}
    for rel in sorted(set(a) & set(b)):
        if rel.endswith(".parquet"):
            counts["tables"] += 1
            same = _table(a[rel]) == _table(b[rel])
        else:
            counts["media" if rel.endswith((".mp4", ".wav")) else "other"] += 1
            same = _digest(a[rel]) == _digest(b[rel])
        if not same:
            diffs.append(f"differs: {rel}")
    return counts, diffs


def main() -> None:
    before, after = (Path(p) for p in sys.argv[1:3])
    counts, diffs = compare(before, after)
    print(f"compared {counts['tables']} tables (by content), {counts['media']} media files and {counts['other']} "
          f"other files (by bytes)")
    for d in diffs:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} difference(s)")
    raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
    main()
