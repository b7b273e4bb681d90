"""Render every feature prompt exactly as sent to a model.

``python -m tests.snapshot_prompts --write`` regenerates
tests/snapshots/prompts.json after an intended prompt change (bump the
feature's or the template's ``version`` first; the test checks that).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tasks.catalog import (GROUPS, batched_version, load_catalog, prompt_version, render_batched, render_prompt,
                           render_transcript)

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "prompts.json"
EXAMPLE_MEDIA = {"duration_s": 30.0, "fps": 2.0}  # one study window


def render_all() -> list[dict]:
    """One entry per feature prompt, per batched group prompt, and the transcript sentence."""
    cat = load_catalog()
    batched = [
        {
            "id": f"batched:{group}",
            "version": 1,
            "template_version": cat.templates.version,
            "prompt_version": batched_version(cat.in_group(group), cat),
            "system": cat.templates.system,
            "user": render_batched(cat.in_group(group), catalog=cat, **EXAMPLE_MEDIA),
        }
        for group in GROUPS
    ]
    transcript = [{"id": "transcript", "version": 1, "template_version": cat.templates.version,
                   "prompt_version": "transcript", "system": "",
                   "user": render_transcript("Can you hear me? Yes.", cat)}]
    return batched + transcript + [
        {
            "id": f.id,
            "version": f.version,
            "template_version": cat.templates.version,
            "prompt_version": prompt_version(f, cat),
            "system": cat.templates.system,
            "user": render_prompt(f, catalog=cat, **EXAMPLE_MEDIA),
        }
        for f in cat.features
    ]


if __name__ == "__main__":
    if "--write" in sys.argv:
        SNAPSHOT.write_text(json.dumps(render_all(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {SNAPSHOT}")
    else:
        print(json.dumps(render_all(), indent=2, ensure_ascii=False))
