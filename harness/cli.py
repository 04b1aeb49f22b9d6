"""The ``harness`` command. Each command is a typed signature whose docstring is its help page
and whose body is one call into the harness. ``UserError`` and pydantic's ``ValidationError`` are
caught here, and only here, printed with rich, and turned into exit code 1; so are the errors of
the environment (a file system's ``OSError``) and, as one line that says so, unexpected ones.
Ctrl-C ends a command with exit code 130. ``harness --debug`` (or ``HARNESS_DEBUG=1``) shows
Python's tracebacks instead."""

from __future__ import annotations

import atexit
import functools
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from core.config import DensifyConfig
from core.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])
console = Console(stderr=True)

DEFAULT_WORKDIR = Path(".harness")  # relative to the current directory, unless HARNESS_HOME is set

Workdir = Annotated[
    Optional[Path],
    typer.Option(help="Caches, stage outputs, locks [default: $HARNESS_HOME, else ./.harness]"),
]
TrackingUri = Annotated[
    Optional[str],
    typer.Option(help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db]"),
]
Setting = Annotated[Optional[str], typer.Option(help="Base setting: a name in studies/settings/ or a YAML path")]
Sets = Annotated[list[str], typer.Option("--set", help="Override KEY=VALUE (dotted key, YAML value); repeatable")]


def main() -> None:
    """The ``harness`` executable: the command, then an exit without the interpreter's teardown of
    its modules (about 0.7 s once mlflow, matplotlib and pandas are loaded, a tenth of a report),
    after the at-exit handlers ran; while another thread still runs, the usual exit."""
    try:
        app(prog_name="harness")
        code = 0
    except SystemExit as end:
        code = end.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, exit 1
        print(code, file=sys.stderr)
        code = 1
    code = code or 0
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging's flush, multiprocessing's and tempfile's clean-ups
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # `harness ... | head`: the reader left, as Python ignores it
            pass
        except (OSError, ValueError):  # output lost (a full disk): Python's own exit code for it
            code = code or 120
    os._exit(code)


def resolve_workdir(workdir: Path | None) -> Path:
    return Path(workdir or os.environ.get("HARNESS_HOME") or DEFAULT_WORKDIR).resolve()


def resolve_tracking_uri(uri: str | None, workdir: Path) -> str:
    from harness.tracking import default_tracking_uri

    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; anything else is a UserError naming the option."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None


DEBUG_ENV = "HARNESS_DEBUG"  # 1: tracebacks, as with --debug
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
_debug = False  # set by --debug, for the command that follows it


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python's traceback of an error (else one line each)")] = False,
) -> None:
    global _debug
    _debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _error(text: str) -> None:
    # soft_wrap: one line per line of the message, never folded mid-path (paths are copied)
    console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _friendly_errors(command):
    """Print errors as one short message (no traceback unless --debug) and exit 1; Ctrl-C: 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if _debug:
            return command(*args, **kwargs)
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as err:
            _error(str(err))
        except ValidationError as err:
            _error(f"invalid input: {err}")
        except KeyboardInterrupt:
            console.print("[bold]interrupted[/]", highlight=False)
            raise typer.Exit(INTERRUPTED) from None
        except OSError as err:  # the environment: a full disk, a permission, a vanished file
            where = f": {err.filename}" if err.filename else ""
            _error(f"{err.strerror or err}{where}")
        except Exception as err:  # a bug, most likely: say so, in one line
            first = (str(err).strip().splitlines() or [""])[0]
            _error(f"{type(err).__name__}: {first} (unexpected: `harness --debug ...` shows the traceback)")
        raise typer.Exit(1)

    return wrapper


def _repeat_options(**options: object) -> str:
    """Command-line options as given (None and empty ones left out), quoted for a shell."""
    parts = []
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is True:
                parts.append(flag)
            elif item is not None and item is not False and item != "":
                # a value that looks like an option (--sbatch --constraint=a100) sticks to its flag
                parts += [f"{flag}={item}"] if str(item).startswith("-") else [flag, str(item)]
    return "".join(f" {shlex.quote(p)}" for p in parts)


@app.command()
@_friendly_errors
def run(
    study: Annotated[Path, typer.Argument(help="The study YAML file")],
    set_: Sets = [],
    workdir: Workdir = None,
    tracking_uri: TrackingUri = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan (cached / to run / shared) and exit")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes running independent stages")] = 1,
    devices: Annotated[Optional[str], typer.Option(help="Comma-separated devices, one worker each (e.g. cuda:0,cuda:1)")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Re-run the (arm, seed) runs that failed before")] = False,
    quiet: Annotated[bool, typer.Option(help="Log lines instead of progress bars (the default when not on a terminal)")] = False,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds replacing the study's (e.g. 0,1,2)")] = None,
    setting: Setting = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run a plan larger than --max-runs")] = False,
    max_runs: Annotated[int, typer.Option(min=1, help="(arm, seed) runs above which the run asks for --yes")] = 500,
    share_checkpoints: Annotated[bool, typer.Option(help="Log pre-trainings' best checkpoints to the store: other workdirs fetch them instead of training them again")] = False,
    nproc_per_node: Annotated[int, typer.Option(min=1, help="Processes per stage on this machine (torchrun's option; one GPU each)")] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="Machines per stage (torchrun's option): harness run on each, or --executor slurm")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="This machine's rank of --nnodes: 0 plans and tracks, the others follow it")] = 0,
    rdzv_endpoint: Annotated[Optional[str], typer.Option(help="HOST[:PORT] where the other nodes reach node 0 (port 29400 if none)")] = None,
    executor: Annotated[str, typer.Option(help="local (this machine), slurm (a job per stage, submitted through submitit), submitit-local (the same jobs here)")] = "local",
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition (over the setting's cluster: section)")] = None,
    time_min: Annotated[Optional[int], typer.Option("--time", min=1, help="Minutes a SLURM job may run")] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option(min=0, help="GPUs per SLURM job (default: --nproc-per-node)")] = None,
    cpus_per_task: Annotated[Optional[int], typer.Option(min=1, help="CPUs per SLURM job")] = None,
    mem_gb: Annotated[Optional[int], typer.Option(min=1, help="Memory per SLURM job, GB")] = None,
    account: Annotated[Optional[str], typer.Option(help="SLURM account")] = None,
    qos: Annotated[Optional[str], typer.Option(help="SLURM quality of service")] = None,
    sbatch: Annotated[list[str], typer.Option(help="More sbatch options, --key=value; repeatable")] = [],
):
    """Expand a study into runs, share and cache stages, execute, and track them in MLflow."""
    from harness import console as ui
    from harness._rank import Launch
    from harness._signals import terminate_as_interrupt
    from harness.execute import StudyInterrupted, plan_study, run_study
    from harness.plan import stage_status
    from harness.preflight import check_launch, check_nodes, check_workdir

    workdir_given = workdir is not None
    workdir = resolve_workdir(workdir)
    seed_list = parse_seeds(seeds) if seeds is not None else None
    device_list = tuple(d.strip() for d in devices.split(",")) if devices else ()
    launch = Launch(nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    check_nodes(launch, executor, workers)
    if dry_run:
        check_workdir(workdir, create=False)
        _, plan, tasks = plan_study(study, tuple(set_), seed_list, setting, device_list)
        check_launch(plan, launch, device_list)
        ui.print_plan(plan, tasks, stage_status(plan, workdir))
        if len(plan.runs) > max_runs:
            console.print(f"{len(plan.runs)} runs are more than --max-runs {max_runs}: harness run will ask for --yes")
        return
    if launch.node_rank > 0:
        _follow(launch)
        return
    given = _repeat_options(workdir=workdir if workdir_given else None, tracking_uri=tracking_uri)
    if executor != "local":
        from harness.cluster import cluster_options
        from harness.study import load_study

        if executor not in ("slurm", "submitit-local"):
            raise UserError(f"--executor {executor!r}: use local, slurm or submitit-local")
        if workers > 1 or device_list:
            raise UserError(f"--executor {executor} runs one job per stage: --workers and --devices are for --executor local")
        options = {"partition": partition, "time": time_min, "gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task,
                   "mem_gb": mem_gb, "account": account, "qos": qos, "sbatch": tuple(sbatch)}  # fmt: skip
        resolved = load_study(study, seed_list, setting)  # the cluster: section of the setting it runs on
        same = _repeat_options(
            set=set_, seeds=seeds, setting=setting, nproc_per_node=nproc_per_node if nproc_per_node > 1 else None,
            nnodes=nnodes if nnodes > 1 else None, executor=executor, partition=partition, time=time_min, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task,
            mem_gb=mem_gb, account=account, qos=qos, sbatch=sbatch, share_checkpoints=share_checkpoints,
        )  # fmt: skip
        _submit(study, resolved.name, executor, cluster_options(resolved.setting, options), workdir,
                resolve_tracking_uri(tracking_uri, workdir), tuple(set_), seed_list, setting, retry_failed, launch,
                None if yes else max_runs, share_checkpoints, given, same)  # fmt: skip
        return
    # Bars redraw in place: in a file (SLURM logs, `> run.log`) they would show only at the end.
    reporter = ui.LogReporter() if quiet or not ui.console.is_terminal else ui.ProgressReporter()
    try:
        with terminate_as_interrupt(), reporter:
            result = run_study(
                study,
                workdir=workdir,
                tracking_uri=resolve_tracking_uri(tracking_uri, workdir),
                overrides=tuple(set_),
                workers=workers,
                devices=device_list,
                retry_failed=retry_failed,
                reporter=reporter,
                seeds=seed_list,
                setting=setting,
                max_runs=None if yes else max_runs,
                share_checkpoints=share_checkpoints,
                launch=launch,
            )
    except StudyInterrupted as stop:
        same = _repeat_options(
            set=set_, seeds=seeds, setting=setting, workers=workers if workers > 1 else None, devices=devices,
            nproc_per_node=nproc_per_node if nproc_per_node > 1 else None, nnodes=nnodes if nnodes > 1 else None,
            rdzv_endpoint=rdzv_endpoint,
        )  # fmt: skip
        console.print(f"[bold]interrupted:[/] {escape(str(stop))}", highlight=False, soft_wrap=True)
        console.print(f"resume with: harness run {shlex.quote(str(study))}{given}{same}", highlight=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
    ui.print_summary(result)
    ui.print_next_steps(result.study.name, resolve_tracking_uri(tracking_uri, workdir), workdir, given)
    if result.failed:
        raise typer.Exit(1)


def _follow(launch) -> None:
    """``harness run --node-rank K`` (K > 0): run the stages node 0 launches, until it ends."""
    from harness._nodes import follow
    from harness._signals import terminate_as_interrupt

    say = lambda line: console.print(escape(line), highlight=False, soft_wrap=True)  # noqa: E731
    try:
        with terminate_as_interrupt():
            followed = follow(launch, say)
    except KeyboardInterrupt:
        say(f"interrupted: node {launch.node_rank} stopped following; node 0's stage fails and resumes when every node runs again")
        raise typer.Exit(INTERRUPTED) from None
    failed = f", {len(followed.failed)} failed here: {', '.join(followed.failed)}" if followed.failed else ""
    say(f"node 0 ended ({followed.end}); this node ran {len(followed.stages)} stages{failed}")
    if followed.end != "done" or followed.failed:
        raise typer.Exit(1)


def _submit(study: Path, name: str, executor: str, cluster, workdir: Path, tracking_uri: str, overrides, seeds, setting,
            retry_failed: bool, launch, max_runs, share_checkpoints: bool, given: str, same: str) -> None:  # fmt: skip
    """``harness run --executor slurm|submitit-local``: submit, show the jobs and what comes next."""
    from harness import console as ui
    from harness.cluster import submit_study

    submitted = submit_study(
        study, executor=executor, cluster=cluster, workdir=workdir, tracking_uri=tracking_uri, overrides=overrides,
        seeds=seeds, setting=setting, retry_failed=retry_failed, launch=launch, max_runs=max_runs,
        share_checkpoints=share_checkpoints,
    )  # fmt: skip
    ui.print_submission(submitted)
    console.print(f"Next:\n  harness status {shlex.quote(name)}{given}   # queued / running / done / failed per stage"
                  f"\n  harness run {shlex.quote(str(study))}{given}{same}   # again: collect what finished, submit what is left",
                  highlight=False, soft_wrap=True)  # fmt: skip


@app.command()
@_friendly_errors
def status(
    study: Annotated[str, typer.Argument(help="The study's name (or its YAML file)")],
    workdir: Workdir = None,
    tracking_uri: TrackingUri = None,
    slurm: Annotated[bool, typer.Option(help="Ask SLURM (sacct) for the state of submitted jobs")] = True,
):
    """Queued / running / done / failed per stage of a study, from the store and its submitted jobs."""
    from harness import console as ui
    from harness.cluster import study_status
    from harness.tracking import Tracker

    workdir = resolve_workdir(workdir)
    name = _study_name(study)
    rows = study_status(name, Tracker(resolve_tracking_uri(tracking_uri, workdir)), workdir, slurm)
    if not rows:
        raise UserError(f"study {name!r} has no runs in {resolve_tracking_uri(tracking_uri, workdir)} and no submitted jobs in {workdir}")
    ui.print_status(name, rows)


def _study_name(study: str) -> str:
    """A study name as given, or the ``name`` of the study file given."""
    if study.endswith((".yaml", ".yml")):
        from harness.study import load_study

        return load_study(Path(study)).name
    return study


@app.command()
@_friendly_errors
def sweep(
    spec: Annotated[Optional[Path], typer.Argument(help="The sweep spec YAML [default: studies/sweep.yaml]")] = None,
    optuna: Annotated[bool, typer.Option("--optuna", help="Search with Optuna (the search backend; required)")] = False,
    set_: Sets = [],
    storage: Annotated[Optional[str], typer.Option(help="Optuna RDB storage URL (postgresql://..., mysql://...) [default: a journal file in WORKDIR/sweeps/NAME/]")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes, each running trials")] = 1,
    retry_failed: Annotated[bool, typer.Option(help="Re-queue the failed trials with the same values")] = False,
    export_best: Annotated[Optional[Path], typer.Option(help="Write a study file re-running the best config with the spec's seeds")] = None,
    workdir: Workdir = None,
    tracking_uri: TrackingUri = None,
    quiet: Annotated[bool, typer.Option(help="Log lines instead of a progress bar (the default when not on a terminal)")] = False,
):
    """Optuna search over config keys: each trial a harness run (shared, cached stages; pruning),
    resumable, with several workers, tracked in MLflow."""
    if not optuna:
        raise UserError("harness sweep needs a search backend: add --optuna (the one there is)")
    from harness.sweep import DEFAULT_SPEC, run_sweep
    from harness.sweep._console import SweepLog, SweepProgress, console as out, print_sweep_summary

    workdir = resolve_workdir(workdir)
    reporter = SweepLog() if quiet or not out.is_terminal else SweepProgress()
    result = run_sweep(
        spec or DEFAULT_SPEC,
        workdir=workdir,
        tracking_uri=resolve_tracking_uri(tracking_uri, workdir),
        storage=storage,
        workers=workers,
        retry_failed=retry_failed,
        overrides=tuple(set_),
        export_path=export_best,
        reporter=reporter,
    )
    print_sweep_summary(result)
    if result.best is None:
        raise UserError(f"sweep '{result.spec.name}': no trial completed")


@app.command()
@_friendly_errors
def report(
    studies: Annotated[Optional[list[str]], typer.Argument(help="Study or sweep names in the store (default: all)")] = None,
    latex: Annotated[bool, typer.Option(help="Also write the paper's files: table.tex (booktabs) and the figures as PDF")] = False,
    standalone: Annotated[bool, typer.Option(help="Wrap table.tex in a document that compiles with pdflatex")] = False,
    metric: Annotated[Optional[str], typer.Option(help="Metric of the ablation plot (default: the study's first)")] = None,
    out: Annotated[Path, typer.Option(help="Output folder; each study writes OUT/<study>/")] = Path("reports"),
    detect: Annotated[Optional[float], typer.Option(min=0.0, help="An rSum difference to plan for: the power lines say how many seeds it needs")] = None,
    workdir: Workdir = None,
    tracking_uri: TrackingUri = None,
):
    """Paper-style tables (.tex/.md/.csv) and plots from the tracking store alone; for a sweep,
    its top-k trials and its figures (history, importances, parallel coordinates, slices)."""
    from harness.report import build_report
    from harness.tracking import probe_store

    uri = resolve_tracking_uri(tracking_uri, resolve_workdir(workdir))
    probe_store(uri)  # an unreachable server: one line in seconds, not minutes of retries
    for path in build_report(uri, studies or None, out, latex=latex, standalone=standalone, metric=metric, detect=detect):
        console.print(f"wrote {path}")


@app.command()
@_friendly_errors
def config(
    prefix: Annotated[Optional[str], typer.Argument(help="Show only keys starting with this (e.g. model.decoder)")] = None,
    markdown: Annotated[bool, typer.Option(help="Print docs/config.md (every key, as Markdown tables)")] = False,
):
    """The config keys with their types, defaults and descriptions, read from the config tree."""
    from rich.table import Table

    from harness.config_doc import config_keys, config_markdown

    if markdown:
        typer.echo(config_markdown(), nl=False)
        return
    keys = [k for k in config_keys() if prefix is None or k.key.startswith(prefix)]
    if not keys:
        raise UserError(f"no config key starts with '{prefix}'; sections: data, model, pretrain, finetune, eval, runtime")
    table = Table()
    table.add_column("key", no_wrap=True)  # keys are what users copy: never cut
    for column in ("type", "default", "description"):
        table.add_column(column)
    for key in keys:
        table.add_row(key.key, key.type, repr(key.default), key.description)
    Console().print(table)


@app.command()
@_friendly_errors
def ui(
    port: Annotated[int, typer.Option(help="Port to bind on 127.0.0.1")] = 5000,
    workdir: Workdir = None,
    tracking_uri: TrackingUri = None,
):
    """Browse the runs in the MLflow UI (the project's store, bound to 127.0.0.1)."""
    from harness.ui import serve_ui

    uri = resolve_tracking_uri(tracking_uri, resolve_workdir(workdir))
    serve_ui(uri, port=port, on_ready=lambda url: console.print(f"MLflow UI for {uri} at [bold]{url}[/] (Ctrl-C stops it)"))


@app.command()
@_friendly_errors
def prepare(setting: Setting = None, set_: Sets = [], workdir: Workdir = None):
    """Decode and cache a dataset's images once, as uint8 arrays (memory-mapped shards)."""
    from core.data import prepare as prepare_data
    from harness.config import resolve

    config = resolve(setting, set_)
    paths = prepare_data(config.data, resolve_workdir(workdir) / "data")
    for split, path in paths.items():
        console.print(f"{split}: {path}")


def _densify_help(field: str) -> str:
    """An option's help: the config field's comment and its default, both from DensifyConfig."""
    from harness.config_doc import config_keys

    key = next(k for k in config_keys(DensifyConfig) if k.key == field)
    return f"{key.description} (default: {key.default!r})"


@app.command()
@_friendly_errors
def densify(
    model: Annotated[str, typer.Option(help="Local folder of an image-text-to-text model (LLaVA family)")],
    out: Annotated[Path, typer.Option(help="The dense-caption JSONL to write (appended, resumable)")],
    splits: Annotated[str, typer.Option(help="Comma-separated splits to caption")] = "train,val,test",
    prompt: Annotated[Optional[str], typer.Option(help=_densify_help("prompt"))] = None,
    top_p: Annotated[Optional[float], typer.Option(help=_densify_help("top_p"))] = None,
    temperature: Annotated[Optional[float], typer.Option(help=_densify_help("temperature"))] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help=_densify_help("max_new_tokens"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_densify_help("batch_size"))] = None,
    device: Annotated[Optional[str], typer.Option(help=_densify_help("device"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_densify_help("seed"))] = None,
    setting: Setting = None,
    set_: Sets = [],
    workdir: Workdir = None,
):
    """Write dense captions for a dataset's images with a local vision-language model."""
    from harness.config import resolve
    from harness.densify import run_densify

    given = dict(prompt=prompt, top_p=top_p, temperature=temperature, max_new_tokens=max_new_tokens,
                 batch_size=batch_size, device=device, seed=seed)
    cfg = DensifyConfig(model=model, **{key: value for key, value in given.items() if value is not None})
    config = resolve(setting, set_)
    names = tuple(s.strip() for s in splits.split(","))
    stats = run_densify(config.data, cfg, out, resolve_workdir(workdir) / "data", names)
    console.print(f"{out}: {stats.written} written, {stats.skipped} already there ({stats.seconds:.0f}s)")


@app.command()
@_friendly_errors
def bench(
    names: Annotated[Optional[list[str]], typer.Argument(help="Benchmarks to run (default: all)")] = None,
    out: Annotated[Path, typer.Option(help="Where results are written")] = Path("reports/benchmarks"),
    device: Annotated[str, typer.Option(help="Device of the benchmarks that take one")] = "cpu",
):
    """Run the benchmark suite (speed, memory, harness overhead) and write reports/benchmarks."""
    from harness.bench import run_benchmarks

    for path in run_benchmarks(list(names or []), out, device):
        console.print(f"wrote {path}")
