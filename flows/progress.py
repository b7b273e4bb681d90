"""One console progress line per stage: recordings done/total, cached, failed, elapsed.

On a terminal the line updates in place; in a log file (``make demo > log``)
rich prints it once, finished.  Prefect's own per-task lines stay in the UI
(its console handler shows critical messages only, see ``flows.settings``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

STAGE_COLUMN = 11  # characters: the longest stage name (kinematics) + 1


@dataclass
class Tally:
    """What a stage's progress line counts."""

    done: int = 0
    cached: int = 0
    failed: int = 0
    stale: int = 0  # failed, their last good result kept


@contextmanager
def stage_line(stage: str, total: int, console: Console | None = None) -> Iterator[callable]:
    """Yields ``tick(cached: bool = False, failed: bool = False, stale: bool = False)``; the line closes with the
    block (stale: a failed recording that keeps its last good result)."""
    tally = Tally()
    prog = Progress(TextColumn(f"[bold]{stage:<{STAGE_COLUMN}}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console or Console(),
                    transient=False)
    task = prog.add_task(stage, total=total, note="")

    def note() -> str:
        failed = f", [red]{tally.failed} failed[/red]" if tally.failed else ""
        stale = f", [yellow]{tally.stale} stale[/yellow]" if tally.stale else ""
        return f"{tally.cached} cached{failed}{stale}"

    def tick(*, cached: bool = False, failed: bool = False, stale: bool = False) -> None:
        tally.done += 1
        tally.cached += cached
        tally.failed += failed
        tally.stale += stale
        prog.update(task, completed=tally.done, note=note())

    with prog:
        yield tick
        if not total:  # e.g. kinematics at a site without gait clips
            prog.update(task, completed=0, note="nothing to do")
