"""Code hashes: a module's source and every ``tasks`` module it imports, transitively.

The stage cache (``tasks.cache``), DVC's deps (``dvc.yaml``) and jobs that
resume inside a stage (train) all hash the same files, so an edit to a
helper reruns exactly the stages that use it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
# Knob definitions and error types do not change what a stage computes (the
# knob *values* are in the key): editing them must not rerun every stage.
NOT_CODE = ("params.py", "errors.py")


def _tasks_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tasks":
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.split(".")[0] == "tasks")
    return mods


def _module_file(mod: str, root: Path = TASKS_DIR) -> Path | None:
    rel = Path(*mod.split(".")[1:])
    if not rel.parts:
        return root / "__init__.py"
    for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def module_files(module: str, root: Path = TASKS_DIR) -> list[Path]:
    """Source files of ``module`` and every ``tasks`` module it imports, transitively (sorted)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        f = _module_file(todo.pop(), root)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(_tasks_imports(f))
    return sorted(f for f in seen if f.name not in NOT_CODE or f.parent != root)


@lru_cache(maxsize=None)
def code_hash(module: str, root: Path = TASKS_DIR) -> str:
    """SHA-256 over the sources of ``module_files(module)``: editing any helper changes it."""
    h = hashlib.sha256()
    for f in module_files(module, root):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()
