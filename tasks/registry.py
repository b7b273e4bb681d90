"""The registry: every stage's declared contract, in run order.

The stage list is ``tasks.layout.STAGES`` (written once); each name's module
``tasks.<name>`` declares ``STAGE`` (``tasks.contract.Stage``).  ``flows/``
iterates ``pipeline_stages()``; the CLI's choices, ``dvc.yaml`` and the README's stage
table follow from it.  Modules are imported by name here, and only here.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from tasks import layout
from tasks.contract import Stage

NOT_IN_PIPELINE = ("synth",)  # the phantom generator: `semioflow synth`, not a stage of a run


@lru_cache(maxsize=None)
def stage(name: str) -> Stage:
    """The declared contract of stage ``name`` (``tasks.<name>.STAGE``)."""
    if name not in layout.STAGES or name in NOT_IN_PIPELINE:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(names())}")
    declared = importlib.import_module(f"tasks.{name}").STAGE
    if not isinstance(declared, Stage) or declared.name != name:
        raise TypeError(f"tasks.{name}.STAGE must be a tasks.contract.Stage named {name!r}")
    return declared


def names() -> tuple[str, ...]:
    """Stage names of a pipeline run, in order."""
    return tuple(n for n in layout.STAGES if n not in NOT_IN_PIPELINE)


def pipeline_stages() -> tuple[Stage, ...]:
    """Every stage of a pipeline run, in order."""
    return tuple(stage(n) for n in names())
