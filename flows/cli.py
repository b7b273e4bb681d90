"""The ``semioflow`` command.

Exit codes: 0 ok, 1 failure (one clear line on stderr; the traceback only
with ``--debug``), 2 bad usage.  Heavy imports (torch, prefect, mediapipe)
happen inside the commands that need them so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from tasks import layout, quiet, registry
from tasks.errors import ConfigError, SemioflowError, did_you_mean

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class CliContext:
    """Global options every command sees."""

    data_dir: Path
    params_path: Path
    debug: bool
    command: str = ""  # the command a flow run is named after when it is not the one running (demo)

    def params(self):
        from tasks.params import load_params

        if not self.params_path.is_file():  # the flag and the value the user gave (this is their console)
            raise ConfigError(f"--params {self.params_path}: no params file there")
        return load_params(self.params_path)


pass_ctx = click.make_pass_decorator(CliContext)


PRIVATE_UMASK = 0o077  # new files 0600, new folders 0700


class Choice(click.Choice):
    """``click.Choice`` whose error says "did you mean", and whose metavar can be a name.

    A long ``{a|b|c|...}`` metavar is one word to the help formatter, which cuts it anywhere to fit the
    line (``face_cro p``); with ``metavar="STAGE"`` the usage line stays short and the command's help lists
    the choices separated by commas, where lines break.
    """

    def __init__(self, choices, *, metavar: str | None = None) -> None:
        super().__init__(choices)
        self.name_metavar = metavar

    def get_metavar(self, param, ctx):
        return self.name_metavar or super().get_metavar(param, ctx)

    def get_invalid_choice_message(self, value, ctx) -> str:
        return (f"{value!r} is not one of {', '.join(map(str, self.choices))}"
                + (did_you_mean(value, self.choices) or "."))


def choices_help(what: str, choices) -> str:
    """``"STAGE is one of: a, b, c."``: a list the help formatter wraps at its spaces."""
    return f"{what} is one of: {', '.join(choices)}."


def _existing_dir(fn):
    """``--inbox DIR``: checked here, before Prefect or a progress line starts (the path may be shown: this is
    the user's own console; flows get a keyed name for it, ``flows.settings.inbox_ref``)."""
    return click.option("--inbox", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                        help="Folder of new seizure recordings (default: ingest.inbox in params; gait clips come "
                             "from ingest.gait_inbox).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Root of one cohort's data layers; several cohorts can live side by side.",
)
@click.option(
    "--params",
    "params_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("params.yaml"),
    show_default=True,
    help="Parameter file (one key per stage).",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="semioflow")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path, params_path: Path, debug: bool) -> None:
    """semioflow: de-identified, versioned MLLM analysis of patient movement videos."""
    # Everything a command writes is patient data or leads to it: files 0600, folders 0700, in this process
    # and every one it starts (workers, the Prefect server, Dask, the commands `dvc repro` runs).
    os.umask(PRIVATE_UMASK)
    ctx.obj = CliContext(data_dir=data_dir, params_path=params_path, debug=debug)
    if debug:  # full third-party logs, here and in worker processes
        os.environ[quiet.DEBUG_ENV] = "1"
    quiet.quiet_environment()


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def features(fmt: str) -> None:
    """Print the ILAE semiology feature catalog (20 features, 3 groups)."""
    from tasks.catalog import load_catalog, prompt_version

    cat = load_catalog()
    rows = [dict(f.to_dict(), prompt_version=prompt_version(f, cat)) for f in cat.features]
    if fmt == "json":
        doc = {"catalog_version": cat.version, "template_version": cat.templates.version, "features": rows}
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    if fmt == "yaml":
        import yaml

        doc = {"catalog_version": cat.version, "template_version": cat.templates.version, "features": rows}
        click.echo(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ILAE semiology features (catalog v{cat.version})", show_lines=False)
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("modality", no_wrap=True)
    table.add_column("prompt", ratio=1)
    for group in cat.group_names:
        feats = cat.in_group(group)
        table.add_section()
        table.add_row(f"[cyan]{cat.group_names[group]} ({len(feats)})", "", f"[cyan]enhancement: {feats[0].enhancement}")
        for f in feats:
            table.add_row(f.id, f.modality, f.prompt)
    Console().print(table)


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, e.g. 1920x1080, got {value!r}") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise click.BadParameter(f"width and height must be positive and even, got {value!r}")
    return w, h


def progress_bar(description: str):
    """A rich progress bar; returns (context manager, callback(done, total))."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=False,
    )
    task_id = prog.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        prog.update(task_id, completed=done, total=total)

    return prog, update


@cli.group()
def synth() -> None:
    """Generate a phantom cohort (demo data with planted ground truth)."""


def _synth_options(fn):
    fn = click.option("--seed", type=int, default=None, help="Cohort seed (default: base.seed).")(fn)
    fn = click.option("--size", default=None, metavar="WxH", help="Frame size, e.g. 1920x1080.")(fn)
    fn = click.option("--fps", type=float, default=None, help="Frame rate of the generated videos.")(fn)
    fn = click.option(
        "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
        help=f"Output folder (default: DATA_DIR/{layout.folder('synth')}/<kind>).",
    )(fn)
    fn = click.option("--workers", type=int, default=None, help="Parallel processes (default: base.workers).")(fn)
    fn = click.option("--force", is_flag=True, help="Regenerate even if the same cohort is already there.")(fn)
    return fn


def _synth_common(obj: CliContext, section: str, kind: str, size, fps, seed, out, workers, **overrides):
    import dataclasses

    params = obj.params()
    sub = getattr(params.synth, section)
    wh = _size(size)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if wh:
        changes.update(width=wh[0], height=wh[1])
    if fps is not None:
        changes["fps"] = fps
    sub = dataclasses.replace(sub, **changes)
    if out is None:  # the phantom goes into the data folder: private before anything is written there
        if (warning := private_data_dir(obj.data_dir)) is not None:
            click.echo(warning, err=True)
        out = layout.path(obj.data_dir, "synth", kind)
    seed = params.base.seed if seed is None else seed
    workers = params.base.workers if workers is None else workers
    return sub, out, seed, workers


@synth.command("seizure")
@_synth_options
@click.option("--patients", type=int, default=None, help="Number of phantom patients.")
@click.option("--recordings-per-patient", type=int, default=None, help="Recordings per patient.")
@pass_ctx
def synth_seizure(obj: CliContext, size, fps, seed, out, workers, force, patients, recordings_per_patient) -> None:
    """EMU-like seizure recordings (MP4 H.264 + AAC) and truth tables."""
    sub, out, seed, workers = _synth_common(
        obj, "seizure", "seizure", size, fps, seed, out, workers,
        patients=patients, recordings_per_patient=recordings_per_patient,
    )
    from tasks.synth.seizure import generate_cohort

    _generate("seizure", generate_cohort, sub, out, seed, workers, force)


@synth.command("gait")
@_synth_options
@click.option("--subjects-per-class", type=int, default=None, help="Subjects per gait class.")
@pass_ctx
def synth_gait(obj: CliContext, size, fps, seed, out, workers, force, subjects_per_class) -> None:
    """Sagittal walking clips of 8 gait classes and truth tables."""
    sub, out, seed, workers = _synth_common(
        obj, "gait", "gait", size, fps, seed, out, workers, subjects_per_class=subjects_per_class,
    )
    from tasks.synth.gait import generate_cohort

    _generate("gait", generate_cohort, sub, out, seed, workers, force)


COHORT_MARKER = "cohort.json"


def _generate(kind: str, generate, sub, out: Path, seed: int, workers: int, force: bool) -> None:
    """Generate a cohort unless ``out`` already holds this exact one (same kind, params, seed).

    The marker makes ``dvc repro`` of the synth stage a no-op when nothing
    changed, so downstream stages see the same files (re-encoding could
    change bytes).  A different cohort replaces the folder entirely, so no
    stale recording lingers in the inbox.
    """
    import dataclasses
    import shutil

    from tasks.atomic import atomic_write_text

    spec = {"kind": kind, "seed": seed, "params": dataclasses.asdict(sub)}
    marker = out / COHORT_MARKER
    if not force and marker.is_file():
        try:
            same = json.loads(marker.read_text()) == spec
        except ValueError:
            same = False
        if same and (out / "videos").is_dir():
            click.echo(f"synth {kind}: cohort in {out} is up to date (seed {seed}); --force regenerates it")
            return
    if out.exists():
        shutil.rmtree(out)
    prog, update = progress_bar(f"synth {kind}")
    with prog:
        summary = generate(out, sub, seed=seed, workers=workers, on_progress=update)
    atomic_write_text(marker, json.dumps(spec, sort_keys=True))
    click.echo(summary.describe())


def _prefect(obj: CliContext):
    """Configure Prefect for this project, then import the flows."""
    from flows import settings

    settings.configure()
    from flows import pipeline

    return pipeline


def _wait_option(fn):
    return click.option("--wait", is_flag=True, help="If another run holds the data folder, wait for it.")(fn)


@cli.command()
@_existing_dir
@_wait_option
@pass_ctx
def ingest(obj: CliContext, inbox: Path | None, wait: bool) -> None:
    """Add new recordings from an inbox folder (pseudonymous ids, quarantine for bad files)."""
    _run_flow(obj, "stage", wait, stage="ingest", inbox=inbox, command="ingest")


QUARANTINE_TABLE = "quarantine.parquet"  # a stage's quarantine rows (ingest's, deidentify's), table quarantine


def quarantined_files(data_dir: Path) -> list[dict]:
    """Every quarantine row of every stage, with the source file from ingest's private id map.

    Rows: ``source_path`` (None when the map has no entry), ``recording_id``, ``stage``, ``reason``,
    ``detail``, ``quarantined_at``.  For the console only (``semioflow quarantine``): the list names files.
    """
    from tasks.identity import ID_MAP
    from tasks.schema import read_table

    id_map = layout.path(data_dir, "ingest") / ID_MAP
    paths = {r["recording_id"]: r["source_path"] for r in read_table("id_map", id_map).to_pylist()} \
        if id_map.is_file() else {}
    rows = []
    for name in layout.STAGES:
        table = layout.path(data_dir, name, QUARANTINE_TABLE)
        if table.is_file():
            for r in read_table("quarantine", table).to_pylist():
                rows.append(dict(source_path=paths.get(r["recording_id"]), **{
                    k: r[k] for k in ("recording_id", "stage", "reason", "detail", "quarantined_at")}))
    return rows


@cli.command("quarantine")
@pass_ctx
def quarantine_cmd(obj: CliContext) -> None:
    """List the quarantined files, each with its reason (from ingest's private id map).

    The list names files: it is printed on this console only, never logged, stored or sent to Prefect.
    """
    if not layout.stage_dir(obj.data_dir, "ingest").is_dir():
        raise click.ClickException(f"--data-dir {obj.data_dir}: no ingest has run there yet (semioflow ingest)")
    rows = quarantined_files(obj.data_dir)
    if not rows:
        click.echo(f"no quarantined files in {obj.data_dir}")
        return
    click.echo(f"{len(rows)} quarantined file(s) in {obj.data_dir} (file, then stage, reason and detail):")
    for r in sorted(rows, key=lambda r: (r["source_path"] or "", r["quarantined_at"])):
        click.echo(r["source_path"] or f"(no file in the id map for {r['recording_id']})")
        detail = f": {r['detail']}" if r["detail"] else ""
        click.echo(f"    {r['stage']} {r['reason']}{detail} [{r['recording_id']}]")


@cli.command(help="Run one stage (one Prefect task run per recording; what dvc.yaml calls).\n\n"
                  + choices_help("STAGE", registry.names()))
@click.argument("name", metavar="STAGE", type=Choice(registry.names(), metavar="STAGE"))
@click.option("--inbox", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Only for ingest: folder of new recordings.")
@_wait_option
@pass_ctx
def stage(obj: CliContext, name: str, inbox: Path | None, wait: bool) -> None:
    # the help is given above: it lists the stages, which a docstring cannot
    _run_flow(obj, "stage", wait, stage=name, inbox=inbox, command="stage")


@cli.command("generate")
@click.option("--check", is_flag=True, help="Only compare; exit 1 when a generated file is stale.")
def generate_cmd(check: bool) -> None:
    """Write dvc.yaml and the README's stage table from the stage registry (tasks/<stage>.py's STAGE)."""
    from flows import generated

    if check:
        stale = generated.stale()
        if stale:
            raise click.ClickException(f"stale: {', '.join(stale)}; run `semioflow generate` and commit")
        click.echo("dvc.yaml and the README's stage table match the stage registry")
        return
    for path in generated.write_all():
        click.echo(f"wrote {path.name}")


@cli.command("run")
@_existing_dir
@_wait_option
@pass_ctx
def run_cmd(obj: CliContext, inbox: Path | None, wait: bool) -> None:
    """Run every stage as one Prefect flow; finished recordings are cached."""
    _run_flow(obj, "pipeline", wait, inbox=inbox, command=obj.command or "run")


def private_data_dir(data_dir: Path) -> str | None:
    """Make a data folder that holds no stage output yet private (0700); returns a warning for one that
    holds outputs and other accounts can read (a site set that up: we do not change it), else None."""
    from tasks import layout

    if not data_dir.is_dir() or not data_dir.stat().st_mode & 0o077:
        return None
    if not any((data_dir / layout.folder(s)).exists() for s in layout.STAGES):
        data_dir.chmod(0o700)  # a new (or git's empty) data folder: patient data is about to go in
        return None
    return (f"warning: the data folder {data_dir} can be read by other accounts (mode "
            f"{data_dir.stat().st_mode & 0o777:o}); make it private: chmod -R go-rwx {data_dir}")


def check_inboxes(params, params_path: Path, inbox: Path | None) -> None:
    """The inboxes ingest will scan exist: said here, naming the param and its value, before Prefect starts
    (the stage's own check runs 20 s later and cannot name the folder: its message reaches Prefect)."""
    ip = params.ingest
    if inbox is not None:
        return  # --inbox: click checked it
    if not ip.inbox and not ip.gait_inbox:
        raise ConfigError(f"ingest.inbox and ingest.gait_inbox in {params_path} are both empty: nothing to scan "
                          "(set one, or pass --inbox DIR)")
    if ip.inbox and not Path(ip.inbox).is_dir():
        raise ConfigError(f"ingest.inbox in {params_path} is {ip.inbox!r}: no folder there (relative to "
                          f"{Path.cwd()}); set it to the folder of seizure recordings, or pass --inbox DIR")


def _run_flow(obj: CliContext, which: str, wait: bool, *, command: str, **kw) -> None:
    from flows.lock import run_lock

    params = obj.params()  # fail fast on bad params, before Prefect starts
    stage = kw.get("stage", "all")
    inbox = kw.pop("inbox", None)
    if stage in ("all", "ingest"):
        check_inboxes(params, obj.params_path, inbox)
    if (warning := private_data_dir(obj.data_dir)) is not None:
        click.echo(warning, err=True)
    t0 = time.monotonic()
    with run_lock(obj.data_dir, wait=wait):
        pipeline = _prefect(obj)
        from flows.settings import api_session, inbox_ref, run_name

        args = dict(data_dir=str(obj.data_dir), params_path=str(obj.params_path),
                    inbox_ref=inbox_ref(inbox) if inbox else None, **kw)
        f = pipeline.pipeline if which == "pipeline" else pipeline.stage_flow
        try:
            with api_session():
                # named so that a stage's run can be found in the UI; no path or parameter in the name
                f = pipeline.with_runner(f, params, obj.data_dir).with_options(flow_run_name=run_name(command, stage))
                out = f(**args)
        finally:
            _write_run_record(obj, pipeline.STAGE_SECONDS, time.monotonic() - t0)
    lines = out if isinstance(out, list) else [out]
    if which != "pipeline":
        for line in lines:
            click.echo(line)
        return
    _closing_summary(obj, lines, time.monotonic() - t0)


LAST_RUN = "last-run.json"  # under .semioflow/: per-stage seconds of the latest run (bench/demo.py reads it)


def _write_run_record(obj: CliContext, stage_seconds: dict[str, float], total_s: float) -> None:
    from flows.settings import state_dir
    from tasks.atomic import atomic_write_text

    atomic_write_text(state_dir() / LAST_RUN, json.dumps(
        {"data_dir": str(obj.data_dir), "total_s": round(total_s, 1),
         "stages": {k: round(v, 1) for k, v in stage_seconds.items()}}, indent=2), mode=0o600)


def _closing_summary(obj: CliContext, lines: list[str], total_s: float) -> None:
    """What ran, where the outputs and the report are, and how to see the runs in the Prefect UI."""
    from flows.settings import server_url

    report = layout.path(obj.data_dir, "report", "report.html")
    for line in lines:  # what ingest found and what had nothing to do (the progress lines say the rest)
        if line.startswith("ingest:") or ": skipped: " in line:
            click.echo(line)
    click.echo(f"done in {_duration(total_s)}; outputs in {obj.data_dir}/ (one folder per stage, see README 'Stages')")
    if report.is_file():
        click.echo(f"report: {report}")
    notes = [n for line in lines for n in line.split(" -- ")[1:]]
    for note in dict.fromkeys(notes):  # banners (random-weight models) and the stages' own advice, once each
        click.echo(f"note: {note}")
    if server_url():
        click.echo("Prefect UI: the runs are on the project's server (semioflow server status prints its URL)")
    else:
        click.echo("Prefect UI: `semioflow server start`, then open the URL it prints: this run is in .semioflow/")


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """The phantom demo: small cohorts, smoke models, every stage of both tracks, the report (make demo).

    The demo's params (``.semioflow/demo-params.yaml``) are PARAMS with a small
    phantom cohort and the model stages at CPU smoke size; PARAMS keeps the study's
    protocol.  A second run finds everything cached.
    """
    from flows.demo_params import write_demo_params
    from flows.settings import state_dir

    obj: CliContext = ctx.obj
    ctx.obj = CliContext(data_dir=obj.data_dir, params_path=write_demo_params(obj.params_path, state_dir() / DEMO_PARAMS),
                         debug=obj.debug, command="demo")
    click.echo(f"demo params: {ctx.obj.params_path} (= {obj.params_path} with a small cohort and smoke-size models)")
    ctx.invoke(synth_seizure)
    ctx.invoke(synth_gait)
    ctx.invoke(models_tiny)
    ctx.invoke(run_cmd)


DEMO_PARAMS = "demo-params.yaml"


@cli.group()
def models() -> None:
    """Model folders the query stage loads."""


@models.command("tiny")
@click.option("--vision-arch", type=Choice(["qwen2_5_vl", "internvl", "qwen3_vl"]), default="qwen2_5_vl",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if the folders exist.")
@pass_ctx
def models_tiny(obj: CliContext, vision_arch: str, seed: int, force: bool) -> None:
    """Build random-weight smoke models at query.vision.model / query.audio.model.

    Real architectures with tiny random weights: every answer they give is
    noise, and every output of a run with them says so.  For demos and tests only.
    """
    from tasks.local_models import TINY_MARKER
    from tasks.tiny_models import build_tiny
    from tasks.model_cache import is_complete, materialize

    p = obj.params()
    wanted = [(p.query.vision.backend, p.query.vision.model, vision_arch),
              (p.query.audio.backend, p.query.audio.model, "audioflamingo3"),
              ("local", p.gait.vlm, "internvl")]  # BioGait's frozen VLM
    for backend, model, arch in wanted:
        if backend != "local":
            click.echo(f"skip {arch}: backend is {backend}, not local")
            continue
        folder = Path(model)
        if (is_complete(folder) or (folder / "config.json").is_file() and not (folder / TINY_MARKER).is_file()) \
                and not force:
            click.echo(f"keep {folder} (exists; --force rebuilds)")
            continue
        # built beside the target and renamed, under a lock: a killed or concurrent build never looks
        # like a model folder, and a finished one is not rebuilt
        materialize(folder, lambda tmp: build_tiny(arch, tmp, seed=seed), force=force)
        click.echo(f"built {arch} random-weight smoke model at {folder} (answers are noise: for smoke runs only)")


@cli.group()
def cluster() -> None:
    """A Dask cluster on this machine (loopback) for base.runner: dask; real clusters: README."""


@cluster.command("up")
@click.option("--workers", "n_workers", type=int, default=2, show_default=True, help="Worker processes.")
@click.option("--gpu", is_flag=True, help="Workers advertise a GPU resource (model stages go to them).")
@click.option("--port", type=int, default=None, help="Scheduler port (default: a free one).")
def cluster_up(n_workers: int, gpu: bool, port: int | None) -> None:
    """Start a scheduler and worker processes on 127.0.0.1 in the background."""
    from flows import cluster as cl
    from flows.settings import state_dir

    st = cl.up(state_dir(), n_workers=n_workers, gpu=gpu, port=port)
    click.echo(f"dask cluster up: scheduler {st['address']}, {n_workers} worker(s){' with a GPU' if gpu else ''}")
    click.echo(f"use it: set base.runner: dask and base.dask_address: {st['address']} in params.yaml")


@cluster.command("down")
def cluster_down() -> None:
    """Stop the cluster `cluster up` started."""
    from flows import cluster as cl
    from flows.settings import state_dir

    n = cl.down(state_dir())
    click.echo(f"stopped {n} process(es)" if n else "no cluster was running")


@cluster.command("status")
def cluster_status() -> None:
    """The cluster's address and live workers (exit 1 if none is up)."""
    from flows import cluster as cl
    from flows.settings import state_dir

    st = cl.status(state_dir())
    if not st or not st["live_workers"]:
        click.echo("dask cluster: not running")
        raise SystemExit(EXIT_FAILURE)
    click.echo(f"dask cluster: scheduler {st['address']}, {len(st['live_workers'])} live worker(s)")
    for addr, w in sorted(st["live_workers"].items()):
        click.echo(f"  {w['name']} {addr} resources {w['resources'] or '-'}")


@cli.group()
def server() -> None:
    """The project's local Prefect server and UI (127.0.0.1)."""


@server.command("start")
@click.option("--port", type=int, default=4200, show_default=True, help="Port on 127.0.0.1.")
@click.option("--database-url", default=None, metavar="URL",
              help="PostgreSQL URL (postgresql+asyncpg://...); default SQLite under .semioflow/.")
def server_start(port: int, database_url: str | None) -> None:
    """Start the server in the background; flows report to it while it is up."""
    from flows import server as srv

    info = srv.start(port=port, database_url=database_url)
    click.echo(f"prefect server up: UI {info.ui_url}  API {info.api_url}  ({info.database}, pid {info.pid})")


@server.command("stop")
def server_stop() -> None:
    """Stop the background server."""
    from flows import server as srv

    click.echo("stopped" if srv.stop() else "no server was running")


@server.command("status")
def server_status() -> None:
    """Say whether the server is up (exit 1 if not)."""
    from flows import server as srv

    info, up = srv.status()
    if not up:
        click.echo("prefect server: not running")
        raise SystemExit(EXIT_FAILURE)
    click.echo(f"prefect server: up at {info.ui_url} (pid {info.pid}, {info.database})")


@cli.command()
@click.option("--cron", default="0 2 * * *", show_default=True, help="When to run (cron, server time zone).")
@_existing_dir
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="After the run: dvc commit + dvc push (+ git commit of dvc.lock).")
@click.option("--register-only", is_flag=True, help="Register the deployment and exit (no serving process).")
@pass_ctx
def schedule(obj: CliContext, cron: str, inbox: Path | None, publish: bool, register_only: bool) -> None:
    """Register the nightly deployment on the local server and serve it (blocks)."""
    from flows import settings

    obj.params()
    settings.configure()
    if "PREFECT_API_URL" not in os.environ:
        raise click.ClickException("no Prefect server is running: start one with `semioflow server start`")
    from flows import nightly

    nightly.register_and_serve(cron=cron, data_dir=str(obj.data_dir.resolve()),
                               params_path=str(obj.params_path.resolve()),
                               inbox_ref=settings.inbox_ref(inbox) if inbox else None, publish=publish,
                               keep_serving=not register_only)


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Output file (default: DATA_DIR/{layout.rel('report', 'report.html')}).")
@pass_ctx
def report(obj: CliContext, out: Path | None) -> None:
    """Write the self-contained HTML report: timelines, justifications, keyframes, metrics."""
    from tasks.report import OUTPUT, build_report

    path = build_report(obj.data_dir, out or layout.path(obj.data_dir, "report", OUTPUT), obj.params())
    click.echo(f"report written to {path}")


@cli.group("labels")
def labels_group() -> None:
    """Reference labels: import a study's annotations (S³'s layout or ours) for the folds stage."""


@labels_group.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=Choice(["s3", "semioflow"]), required=True,
              help="s3: Seizure-Semiology-Suite labels CSV; semioflow: CSV/Parquet with source_name, feature_id, "
                   "label (+ optional patient_id, annotator_1..3, onset_s, offset_s, justification).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("annotations"),
              show_default=True, help="Folder for labels.parquet and patients.parquet (keep it with the raw "
                                      "recordings: it names their files).")
@click.option("--patient-pattern", default=None, metavar="REGEX",
              help="Regular expression whose 'patient' (or first) group is the patient code in a file name "
                   "(default: S³'s, the text before the first '@').")
@click.option("--diagnoses", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="ES / NES per file: S³'s file_name,label CSV or source_name,diagnosis (-> diagnoses.parquet).")
def labels_import(source: Path, fmt: str, out: Path, patient_pattern: str | None, diagnoses: Path | None) -> None:
    """Turn SOURCE into the labels tables folds.labels / folds.recordings (/ folds.diagnoses) point at."""
    from tasks.annotations import import_diagnoses, import_labels
    from tasks.s3 import DEFAULT_PATIENT_PATTERN

    counts = import_labels(fmt, source, out, patient_pattern=patient_pattern or DEFAULT_PATIENT_PATTERN)
    click.echo(f"labels: {counts['files']} files of {counts['patients']} patients, {counts['yes']} yes, "
               f"{counts['no']} no, {counts['not_assessable']} not assessable, {counts['with_onset']} with an onset")
    dx = ""
    if diagnoses is not None:
        d = import_diagnoses(diagnoses, out)
        click.echo(f"diagnoses: {d['diagnosed']} files, {d['es']} ES, {d['diagnosed'] - d['es']} NES")
        dx = f"  folds.diagnoses: {out / 'diagnoses.parquet'}"
    click.echo(f"set in params.yaml: folds.labels: {out / 'labels.parquet'}  folds.recordings: "
               f"{out / 'patients.parquet'}{dx}")


@labels_group.command("score-s3")
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("outputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def labels_score_s3(labels: Path, outputs: Path) -> None:
    """Score S³ per-segment OUTPUTS (merged by any-yes) against S³ LABELS: Task 1 per feature, as S³ does."""
    from tasks.catalog import load_catalog
    from tasks.s3 import read_labels, read_segment_outputs, score_outputs

    catalog = load_catalog()
    rows = score_outputs(read_labels(labels, catalog), read_segment_outputs(outputs, catalog), catalog)
    click.echo("| feature | metric | F1 | n | positives | not assessable | missing |")
    click.echo("|---|---|---|---|---|---|---|")
    for r in rows:
        click.echo(f"| {catalog.by_id(r['feature_id']).name} | {r['metric']} | {r['f1']:.3f} | {r['n']} | "
                   f"{r['positives']} | {r['not_assessable']} | {r['missing']} |")


@cli.command("export")
@click.option("--format", "fmt", type=Choice(["s3"]), required=True, help="s3: S³'s per-video layout.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The CSV to write. It names the original files (S³ matches on them): keep it with the raw "
                   "recordings.")
@click.option("--video-arm", default="raw", show_default=True, help="The arm whose answers the video features take.")
@click.option("--audio-arm", default="audio_raw", show_default=True, help="The arm the audio features take.")
@pass_ctx
def export_cmd(obj: CliContext, fmt: str, out: Path, video_arm: str, audio_arm: str) -> None:
    """Write the aggregated predictions in another benchmark's layout (so its scripts score them)."""
    from tasks.annotations import export_s3

    counts = export_s3(obj.data_dir, out, video_arm=video_arm, audio_arm=audio_arm)
    click.echo(f"export: {counts['videos']} videos x {counts['features']} features ({counts['positive']} yes, "
               f"{counts['not_assessable']} not assessable) "
               f"written to {out}; it names the original files: keep it with the raw recordings")


@cli.group("review")
def review_group() -> None:
    """Blinded expert review: Study 1 (faithfulness) and Study 2 (comparison of rationales)."""


def _database_option(fn):
    return click.option("--database", metavar="URL", default=None,
                        help="SQLAlchemy URL (default: $SEMIOFLOW_REVIEW_DB, review.database, or SQLite in "
                             f"DATA_DIR/{layout.folder('review')}).")(fn)


def _review_db(obj: CliContext, database: str | None):
    from tasks import review as rv

    params = obj.params()
    return params, rv, rv.open_db(rv.database_url(obj.data_dir, params.review, database))


@review_group.command("add-reviewer")
@click.argument("name")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the password from this file's first line instead of prompting.")
@click.option("--reset", is_flag=True, help="Set a new password for an existing reviewer.")
@_database_option
@pass_ctx
def review_add_reviewer(obj: CliContext, name: str, password_file: Path | None, reset: bool,
                        database: str | None) -> None:
    """Create a reviewer account (the password is prompted for unless --password-file is given)."""
    _, rv, engine = _review_db(obj, database)
    if password_file:
        lines = password_file.read_text(encoding="utf-8").splitlines()
        password = lines[0] if lines else ""
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    rv.add_reviewer(engine, name, password, replace=reset)
    click.echo(f"reviewer {name} {'updated (every session of the old password ended)' if reset else 'added'}")


@review_group.command("logout")
@click.argument("name")
@_database_option
@pass_ctx
def review_logout(obj: CliContext, name: str, database: str | None) -> None:
    """End every session of reviewer NAME now (a lost laptop, a shared screen)."""
    _, rv, engine = _review_db(obj, database)
    try:
        n = rv.end_sessions(engine, name)
    except rv.ReviewError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"reviewer {name}: {n} session(s) ended")


@review_group.command("serve")
@click.option("--host", default=None, help="Interface (default: review.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: review.port).")
@_database_option
@pass_ctx
def review_serve(obj: CliContext, host: str | None, port: int | None, database: str | None) -> None:
    """Serve the review app (blocks; Ctrl-C stops it).  Cases are drawn from the data dir on start."""
    params, rv, engine = _review_db(obj, database)
    host = host or params.review.host
    port = port or params.review.port
    counts = rv.prepare(engine, obj.data_dir, params)
    if not rv.reviewer_names(engine):
        click.echo("no reviewers yet: add one with `semioflow review add-reviewer NAME`", err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host} over plain HTTP; put it behind TLS or keep it on 127.0.0.1", err=True)
    click.echo(f"review app on http://{host}:{port}/ (Study 1: {counts[rv.STUDY_FAITHFULNESS]} cases, "
               f"Study 2: {counts[rv.STUDY_COMPARISON]} cases; database {rv.safe_url(engine)})")
    from tasks.review_app import serve

    serve(engine, obj.data_dir, params, host=host, port=port)


@review_group.command("stats")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Output folder (default: DATA_DIR/{layout.folder('review')}).")
@_database_option
@pass_ctx
def review_stats(obj: CliContext, out: Path | None, database: str | None) -> None:
    """Faithfulness share >= pass score and medians, mean Likert, preference rates; exported to Parquet."""
    params, rv, engine = _review_db(obj, database)
    out = out or obj.data_dir / rv.OUT_DIR
    summary = rv.export(engine, out, params)
    rows = summary.pop("stats")
    click.echo(f"{summary['reviewers']} reviewers, {summary['faithfulness_ratings']} faithfulness scores, "
               f"{summary['comparison_ratings']} Likert ratings, {summary['choices']} preference choices")
    for r in rows:
        p = f"  p={r['p_value']:.3g}" if r["p_value"] is not None else ""
        scale = f" [{r['scale']}]" if r["scale"] else ""
        click.echo(f"{r['study']:<12} {r['metric']:<11} {r['key']}{scale}: {r['value']:.3f} (n={r['n']}){p}")
    click.echo(f"exported to {out}")


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map outcomes to exit codes 0/1/2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _wants_debug(argv)
    try:
        rv = cli.main(args=argv, prog_name="semioflow", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return EXIT_FAILURE
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except SemioflowError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {_one_line(exc)}", err=True)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            traceback.print_exc()
        click.echo(f"error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)", err=True)
        return EXIT_FAILURE
    return rv if isinstance(rv, int) else EXIT_OK


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run() -> None:
    """Console-script shim: ``sys.exit(main())``."""
    sys.exit(main())


if __name__ == "__main__":
    run()
