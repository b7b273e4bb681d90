"""The response cache: one JSON file per answered request, keyed by model, prompt, media and generation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


from tasks.atomic import atomic_write_text
from tasks.query.questions import Question, media_sha256



# ---- response cache ----------------------------------------------------------------------


class ResponseCache:
    """One JSON file per completed reply; written atomically, so complete or absent."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if entry.get("key") == key else None

    def put(self, key: str, entry: dict) -> None:
        atomic_write_text(self._path(key), json.dumps({"key": key, **entry}, sort_keys=True))


def request_seed(q: Question) -> int:
    """Sampling seed of one request (temperature > 0): fixed by its text and media, so the same request
    draws the same sample, and different requests draw independently (one seed for all would pick the
    same side of every close yes/no)."""
    blob = f"{q.system}\x1f{q.prompt}\x1f{media_sha256(q.media)}".encode("utf-8")
    return int(hashlib.sha256(blob).hexdigest()[:8], 16)


def request_key(model_id: str, backend: str, q: Question, gen: dict) -> str:
    """Cache key of one request (see module doc)."""
    text = hashlib.sha256(f"{q.system}\x1f{q.prompt}".encode("utf-8")).hexdigest()
    blob = json.dumps({"model": model_id, "backend": backend, "prompt": q.prompt_version, "text": text,
                       "media": media_sha256(q.media), "gen": gen}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


