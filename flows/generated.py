"""Files generated from the stage registry: ``dvc.yaml`` and the README's stage table.

``semioflow generate`` writes both; ``--check`` (and the test suite) fails when either is stale.

Each stage's deps are what its contract declares it reads (data-dir inputs,
``${params.key}`` paths outside the data dir) plus every ``tasks/`` module its
code hash covers (``tasks.cache.module_files``), so DVC and the Prefect cache
rerun a stage for the same edits.  Outputs are persisted: DVC would delete
them before running a stage, and the markers must find finished recordings
in place.
"""

from __future__ import annotations

from pathlib import Path

from tasks import layout, registry
from tasks.codehash import TASKS_DIR, module_files
from tasks.contract import Stage

REPO = TASKS_DIR.parent
DATA = "data"
HEADER = """\
# GENERATED from the stage registry (tasks/registry.py, each tasks/<stage>.py's STAGE): do not edit.
# Regenerate with `semioflow generate`; tests/test_pipeline.py fails when this file is stale.
# One DVC stage per tasks/ module; same names as params keys, Prefect tasks and data folders.
# deps: what each stage's contract says it reads, and every tasks/ module its code hash covers.
# Outputs are persisted (persist: true): DVC would delete them before running the stage, and
# the cache markers must find finished recordings in place.
stages:
"""
SYNTH = """\
  synth:
    cmd: semioflow synth seizure && semioflow synth gait
    deps:
{deps}
    params:
      - base.seed
      - synth
    outs:
      # persisted: `semioflow synth` skips regeneration when the cohort is unchanged
      - {seizure}:
          persist: true
      - {gait}:
          persist: true
"""


def _code(module: str) -> list[str]:
    return [f.relative_to(REPO).as_posix() for f in module_files(module)]


def _data_deps(stage: Stage) -> list[str]:
    """Data-dir inputs as DVC paths: a per-recording pattern's folder; nothing under an app's folder."""
    apps = tuple(layout.folder(a) + "/" for a in layout.APPS)
    deps = []
    for rel in stage.data_inputs:
        if "{rid}" in rel:
            rel = rel.rsplit("/", 1)[0]
        if not rel.startswith(apps):
            deps.append(f"{DATA}/{rel}")
    return list(dict.fromkeys(deps))


def _outs(stage: Stage) -> list[str]:
    lines: list[str] = []
    base = f"{DATA}/{layout.folder(stage.name)}"
    for section in ("outs", "metrics", "plots"):
        outs = [o for o in stage.outs if o.section == section]
        if not outs:
            continue
        lines.append(f"    {section}:")
        if section == "outs" and stage.note:
            lines.append(f"      # {stage.note}")
        for o in outs:
            lines.append(f"      - {base}/{o.path}:" if o.path else f"      - {base}:")
            for k, v in list(o.options.items()) + [("persist", True)]:
                lines.append(f"          {k}: {str(v).lower() if isinstance(v, bool) else v}")
    return lines


def _keys_but_paths(stage: Stage) -> list[str]:
    """The ``section.key`` params of a stage's sections except its ``external`` path keys."""
    import dataclasses
    import typing

    from tasks.params import Params

    hints = typing.get_type_hints(Params)
    return [f"{sec}.{f.name}" for sec in stage.sections for f in dataclasses.fields(hints[sec])
            if f"{sec}.{f.name}" not in stage.external]


def render() -> str:
    """The text of ``dvc.yaml``."""
    synth_code = sorted(set(_code("tasks.synth.seizure") + _code("tasks.synth.gait")))
    parts = [HEADER, SYNTH.format(deps="\n".join(f"      - {d}" for d in synth_code + ["tasks/prompts/features.yaml"]),
                                  seizure=f"{DATA}/{layout.rel('synth', 'seizure')}",
                                  gait=f"{DATA}/{layout.rel('synth', 'gait')}")]
    for stage in registry.pipeline_stages():
        source = stage.kind == "source"
        # the source stage reads the raw inboxes: their paths (and every raw file name under them) must not
        # reach dvc.lock, which the nightly job commits, nor DVC's state: no path deps, no path params, and
        # it always runs (finding new files is its job; its outputs' hashes decide what runs after it)
        # (the phantom's folders stand in as deps, so DVC still makes the demo's phantom before ingest reads it)
        external = [f"{DATA}/{layout.rel('synth', c)}" for c in ("seizure", "gait")] if source else \
            [f"${{{k}}}" for k in stage.external if k not in stage.optional]
        deps = external + _data_deps(stage) + list(stage.assets) + _code(f"tasks.{stage.name}")
        lines = ["", f"  {stage.name}:", f"    cmd: semioflow stage {stage.name}"]
        lines += ["    always_changed: true"] if source else []
        lines += ["    deps:"] + [f"      - {d}" for d in deps]
        lines += ["    params:"] + [f"      - {s}" for s in (_keys_but_paths(stage) if source else stage.sections)]
        lines += _outs(stage)
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


README = REPO / "README.md"
TABLE_BEGIN = "<!-- stage table: generated by `semioflow generate` from the registry; do not edit -->"
TABLE_END = "<!-- end of stage table -->"


def stage_table() -> str:
    """The README's stage table (markdown), one row per stage of the registry."""
    rows = ["| stage | kind | params keys | reads | output | what |", "|---|---|---|---|---|---|",
            f"| synth | phantom (`semioflow synth`) | `synth` | | `data/{layout.folder('synth')}/` "
            "| phantom seizure and gait cohorts with planted truth |"]
    for stage in registry.pipeline_stages():
        kind = {"source": "source", "recording": f"per {stage.cohort + ' ' if stage.cohort else ''}recording{'' if stage.cohort else ', every cohort'} (after {stage.after})",
                "cohort": "cohort"}[stage.kind]
        reads = sorted({layout.STAGES[int(rel[:2])] for rel in stage.data_inputs
                        if int(rel[:2]) < len(layout.STAGES)} - {stage.name})
        reads += [f"`${{{k}}}`" for k in stage.external]
        rows.append(f"| {stage.name} | {kind} | {', '.join(f'`{s}`' for s in stage.sections)} | {', '.join(reads)} "
                    f"| `data/{layout.folder(stage.name)}/` | {stage.summary} |")
    return "\n".join(rows) + "\n"


def readme_with_table(text: str) -> str:
    """``text`` (the README) with the stage table between its markers replaced."""
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_BEGIN}\n{stage_table()}{TABLE_END}{tail}"


def stale() -> list[str]:
    """Generated files that differ from what the registry gives."""
    out = []
    if (REPO / "dvc.yaml").read_text(encoding="utf-8") != render():
        out.append("dvc.yaml")
    text = README.read_text(encoding="utf-8")
    if readme_with_table(text) != text:
        out.append("README.md (stage table)")
    return out


def write_all() -> list[Path]:
    """Write ``dvc.yaml`` and the README's stage table."""
    (REPO / "dvc.yaml").write_text(render(), encoding="utf-8")
    README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    return [REPO / "dvc.yaml", README]
