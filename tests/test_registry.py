"""The stage contract and its registry: one stage list, folder names written once, no stage importing another,
generated files (dvc.yaml, the README's stage table) in step with the registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from flows import generated
from tasks import layout, registry
from tasks.codehash import module_files
from tasks.contract import Stage

REPO = Path(__file__).resolve().parents[1]
STAGE_MODULES = set(registry.names())
FOLDER_LITERAL = re.compile(r"\b\d\d_(" + "|".join(layout.STAGES + layout.APPS) + r")\b")


def _tasks_imports(path: Path) -> set[str]:
    """Modules of ``tasks`` that ``path`` imports (``from tasks import x`` counts as tasks.x)."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tasks":
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names if node.module == "tasks")
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.split(".")[0] == "tasks")
    return mods


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (what code uses, not what it says)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_every_stage_declares_its_contract_under_its_own_name():
    stages = registry.pipeline_stages()
    assert [s.name for s in stages] == [n for n in layout.STAGES if n != "synth"]
    for s in stages:
        module = REPO / "tasks" / f"{s.name}.py"
        assert isinstance(s, Stage) and (module.is_file() or (module.with_suffix("") / "__init__.py").is_file())
        assert (REPO / "tests" / f"test_{s.name}.py").is_file(), f"tests/test_{s.name}.py"
        assert {k.split(".")[0] for k in s.sections} <= set(yaml.safe_load((REPO / "params.yaml").read_text())), s.name
        if s.kind == "recording":
            assert s.after in layout.STAGES[: layout.STAGES.index(s.name)], f"{s.name} runs after {s.after}"
            assert s.tables, f"{s.name}: a recording stage gathers its per-recording files into tables"
    with pytest.raises(KeyError, match="unknown stage"):
        registry.stage("nosuchstage")


def test_a_stage_contract_refuses_what_the_registry_could_not_use():
    def run(data_dir, out_dir, params):
        return {}

    with pytest.raises(ValueError, match="not in tasks.layout.STAGES"):
        Stage("nosuch", "cohort", run, "x")
    with pytest.raises(ValueError, match="'after'"):
        Stage("window", "recording", run, "x")
    with pytest.raises(ValueError, match="kind"):
        Stage("window", "batch", run, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="section.key"):
        Stage("folds", "cohort", run, "x", external=("labels",))


def test_no_stage_module_imports_another_stage():
    found = []
    for name in STAGE_MODULES:
        module = REPO / "tasks" / f"{name}.py"
        files = [module] if module.is_file() else sorted(module.with_suffix("").glob("*.py"))
        for mod in {m for f in files for m in _tasks_imports(f)}:
            other = mod.split(".")[1] if mod.count(".") >= 1 else ""
            if other in STAGE_MODULES and other != name:
                found.append(f"tasks/{name}.py imports tasks.{other}")
    assert not found, found
    # and transitively: a stage's code hash covers no other stage's module (editing one never reruns another)
    for name in STAGE_MODULES:
        others = {f.stem if f.parent.name == "tasks" else f.parent.name for f in module_files(f"tasks.{name}")
                  if f.parent.name == "tasks" or f.parent.parent.name == "tasks"} & STAGE_MODULES
        assert others == {name}, (name, others)


def test_folder_names_are_written_once():
    """``NN_stage`` appears in code only in tasks/layout.py (docstrings may mention it)."""
    found = []
    for path in sorted((REPO / "tasks").rglob("*.py")) + sorted((REPO / "flows").rglob("*.py")) \
            + sorted((REPO / "bench").rglob("*.py")):
        if path.name == "layout.py":
            continue
        found += [f"{path.relative_to(REPO)}:{line}: {text!r}" for line, text in _code_strings(path)
                  if FOLDER_LITERAL.search(text)]
    assert not found, "\n".join(found)
    assert layout.folder("report") == "16_report" and layout.folder("review") == "17_review"
    assert [layout.folder(s)[:2] for s in layout.STAGES] == [f"{i:02d}" for i in range(len(layout.STAGES))]


def test_generated_files_match_the_registry():
    assert generated.stale() == [], "run `semioflow generate` and commit dvc.yaml and README.md"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["synth", *registry.names()]
    for s in registry.pipeline_stages():
        deps = set(stages[s.name]["deps"])
        code = {f.relative_to(REPO).as_posix() for f in module_files(f"tasks.{s.name}")}
        assert code <= deps, (s.name, code - deps)  # DVC reruns a stage for the edits its code hash sees
        assert all(re.match(r"data/\d\d_[a-z_]+(/|$)", d) for d in deps if not d.startswith(("tasks/", "${"))), \
            (s.name, deps)  # data deps are inside a stage's folder (an external key is a ${param}, never a path)
        if s.kind == "source":  # the raw inboxes: no path of theirs may reach dvc.lock, so no dep and no param
            assert not [d for d in deps if d.startswith("${")] and stages[s.name]["always_changed"] is True
            assert not set(stages[s.name]["params"]) & set(s.external) and "ingest" not in stages[s.name]["params"]
        else:
            assert {f"${{{k}}}" for k in s.external if k not in s.optional} <= deps
            assert stages[s.name]["params"] == list(s.sections)
        outs = [next(iter(o)) for section in ("outs", "metrics", "plots") for o in stages[s.name].get(section, [])]
        assert outs and all(o.startswith(f"data/{layout.folder(s.name)}") for o in outs)


def test_readme_layout_names_every_module():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout_section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    modules = [p for folder in ("tasks", "flows") for p in (REPO / folder).glob("*.py") if p.name != "__init__.py"]
    modules += [p for p in (REPO / "tasks" / "query").glob("*.py") if p.name != "__init__.py"]
    missing = [p.relative_to(REPO).as_posix() for p in modules if p.name not in layout_section]
    assert not missing, f"README 'Layout' does not name: {missing}"
