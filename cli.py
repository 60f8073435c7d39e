"""`landscape`: one typer app for training (AT / AT-AWP) and weight-loss-landscape diagnostics.

The CLI only parses options, builds a config and calls one library function. User mistakes raise
`awp.errors.UserError` (or a click usage error) and become one line `error: ...` with exit status 2,
in one place: `main()`.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from awp import __version__
from awp.errors import ERROR_FILE_ENV, Interrupted, UserError
from awp.stopping import resume_command

app = typer.Typer(
    name="landscape",
    help="Adversarial Weight Perturbation trainer and on-the-fly PGD weight-loss-landscape diagnostics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


from awp.attacks import NORMS  # noqa: E402

Norm = NORMS.choices("Norm")  # the CLI's choices come from the registries


def _version(value: bool) -> None:
    if value:
        typer.echo(f"landscape {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Adversarial Weight Perturbation trainer and on-the-fly PGD weight-loss-landscape diagnostics."""


DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="Where torchvision datasets live.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


# --------------------------------------------------------------------------------------------- data


@app.command()
def download(
    dataset: Annotated[str, typer.Argument(help="cifar10, cifar100 or svhn (digits is embedded).")],
    data_dir: DataDirOpt = Path("data"),
) -> None:
    """Fetch a torchvision dataset into --data-dir (needs internet)."""
    from awp.data import dataset_info, download as fetch

    info = dataset_info(dataset)
    if not info.needs_download:
        typer.echo(f"{dataset} is embedded in the package; nothing to download")
        return
    fetch(dataset, data_dir)
    typer.echo(f"{dataset} ready in {data_dir}")


# --------------------------------------------------------------------------------------------- demo


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="A reduced study in well under a minute (what the tests run).")] = False,
    full: Annotated[bool, typer.Option("--full", help="The fuller study: the zoo's AWP variants too (TRADES-, MART-, RST-, AT-ES-AWP) and every run evaluated every epoch (seeds 0,1,2: about 35-40 min on 2 CPU cores, estimated from the default demo's per-run times, not timed end to end).")] = False,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Independent trainings, e.g. 0,1,2: each claim is judged per seed and with the seeds as units (default 0,1; --full 0,1,2).")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where the run files go.")] = Path("runs/demo"),
    figures_dir: Annotated[Path, typer.Option("--figures-dir", help="Where the PNG figures go.")] = Path("figures"),
    report: Annotated[Path, typer.Option("--report", help="The interactive HTML report.")] = Path("report.html"),
    device: DeviceOpt = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace figures and report that are not an earlier demo's, and demo runs made with other settings.")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Processes that train and probe runs side by side (default: one per CPU core, at most one per run).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """The main job on the embedded digits: train every method, probe landscapes, check the paper's claims."""
    from awp.config import resolve_device
    from landscape.commands.demo import DemoConfig, default_workers, parse_seeds, run_demo
    from awp.distributed import check_workers

    resolve_device(device)
    seed_list = parse_seeds(seeds if seeds is not None else ("0,1,2" if full else "0,1"))
    workers = default_workers(seed_list, device, full) if workers is None else workers
    check_workers(workers, device, offer=False)
    run_demo(DemoConfig(seeds=seed_list, workers=workers, quick=quick, full=full, runs_dir=str(runs_dir), figures_dir=str(figures_dir),
                        report=str(report), device=device, progress=not quiet, overwrite=overwrite))


# ---- train-awp / info / export

_T = "Training"
_A = "Threat model and attacks"
_W = "AWP (Algorithm 2)"
_R = "Run file"


_M = "Method options (each for its own --method; also --method-params JSON)"


def with_extra_options(command, name: str, extra: list, pack):
    """`command` with the typer options `extra` (inspect.Parameters) besides its own; it receives the
    values typer parsed for them as one argument `name` = pack({option: value})."""
    import functools
    import inspect

    own = inspect.signature(command, eval_str=True)
    added = {p.name for p in extra}

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(**{k: v for k, v in kwargs.items() if k not in added},
                       **{name: pack({k: v for k, v in kwargs.items() if k in added})})

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.parameters.values() if p.name != name]
    params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in extra]
    wrapper.__signature__ = own.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def with_method_flags(command):
    """Give `command` one --METHOD-PARAM option per parameter a registered method declares (built from
    the registry, e.g. --trades-beta, --mart-lambda); it receives the given ones as
    `method_flags` = {method: {param: text}}."""
    import inspect

    from awp.methods import method_flag_params, param_flag

    table = method_flag_params()

    def pack(values: dict) -> dict[str, dict[str, str]]:
        given: dict[str, dict[str, str]] = {}
        for name, value in values.items():
            if value is not None:
                method, param = table[name]
                given.setdefault(method, {})[param.name] = value
        return given

    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
            param_flag(method, p.name), help=f"{method}: {p.help} (default {p.default!r}).", rich_help_panel=_M)])
        for name, (method, p) in table.items()
    ]
    return with_extra_options(command, "method_flags", extra, pack)


_PO = "Output and processes"
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Processes on this machine (torch's elastic launcher, as torchrun).", rich_help_panel=_PO)]
OversubOpt = Annotated[bool, typer.Option("--oversubscribe", help="Allow more --workers than CPU cores (or GPUs with nccl).", rich_help_panel=_PO)]

# Precision and kernels (awp.kernels), shared by train-awp, eval, probe and plot2d; train-awp defaults them to
# None ("not given": its --config file or the resumed run decides), the others to fp32 / off.
from awp.kernels import PRECISIONS  # noqa: E402

_K = "Precision and kernels"
PrecisionOpt = Annotated[Optional[str], typer.Option("--precision", help=f"Autocast dtype of every forward: {', '.join(PRECISIONS.names())} (fp32: none; fp16 trains with a loss scaler). Changes the numbers, so a file resumes only at its own.", rich_help_panel=_K)]
ChannelsLastOpt = Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="Weights and batches in channels_last memory format (speed only: on CPU max-pooling with gradients is much faster).", rich_help_panel=_K)]
CompileOpt = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model's forward (speed only; falls back to uncompiled, with a warning, where compiling fails).", rich_help_panel=_K)]


@app.command("train-awp")
@with_method_flags
def train_awp(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run file (HDF5) to write; default runs/DATASET-METHOD.h5 (METHOD-awp with --awp).", rich_help_panel=_R)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file setting any option (flat keys, e.g. eps = \"8/255\"); flags override it.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="The paper's setting by name (list: landscape presets), under --config and flags; the method stays --method / --awp.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="digits (embedded, default), cifar10, cifar100, svhn.")] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Where torchvision datasets live.")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Model from the registry (digits: smallcnn, CIFAR/SVHN: preactresnet18).")] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option("--arch-kwargs", help="Model options as JSON, e.g. '{\"widths\": [16, 32, 32]}'.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Training method from the registry: at (Madry et al.); at-awp is at with --awp.", rich_help_panel=_T)] = None,
    method_params: Annotated[Optional[str], typer.Option("--method-params", help="The method's own parameters as JSON, e.g. '{\"NAME\": VALUE}' (in a --config file: method-params = {NAME = VALUE}); those not given take the method's defaults.", rich_help_panel=_T)] = None,
    norm: Annotated[Optional[Norm], typer.Option("--norm", help="Threat model.", rich_help_panel=_A)] = None,
    eps: Annotated[Optional[str], typer.Option("--eps", help="Radius in pixels, e.g. 0.25 or 8/255 (digits 0.25, CIFAR 8/255).", rich_help_panel=_A)] = None,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", help="PGD steps K1 for training (10).", rich_help_panel=_A)] = None,
    train_step_size: Annotated[Optional[str], typer.Option("--train-step-size", help="PGD step eta1 (default eps/4 for L-inf; 2/255 on CIFAR).", rich_help_panel=_A)] = None,
    eval_steps: Annotated[Optional[int], typer.Option("--eval-steps", help="PGD steps for the per-epoch evaluation (CIFAR 20, digits 10).", rich_help_panel=_A)] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Measure train/test robustness every N epochs and at the last (1); the validation split is measured every epoch. Changes no weight.", rich_help_panel=_A)] = None,
    eval_step_size: Annotated[Optional[str], typer.Option("--eval-step-size", help="PGD step for evaluation (default: the training step).", rich_help_panel=_A)] = None,
    l2_start: Annotated[Optional[str], typer.Option("--l2-start", help="L2 PGD random start: reference (radius eps*U(0,1), the authors' code) or ball (uniform in the ball).", rich_help_panel=_A)] = None,
    awp: Annotated[Optional[bool], typer.Option("--awp/--no-awp", help="Adversarial weight perturbation around every step of the method (default off).", rich_help_panel=_W)] = None,
    gamma: Annotated[Optional[str], typer.Option("--gamma", help="AWP size gamma of Eq. 8 (digits 0.01; PreAct ResNet-18 on CIFAR/SVHN 0.01, Table 1; WideResNet 5e-3).", rich_help_panel=_W)] = None,
    awp_steps: Annotated[Optional[int], typer.Option("--awp-steps", help="AWP ascent steps K2 (1).", rich_help_panel=_W)] = None,
    awp_step_size: Annotated[Optional[str], typer.Option("--awp-step-size", help="AWP step eta2 (default gamma/(A*K2), Appendix D.2).", rich_help_panel=_W)] = None,
    awp_alternations: Annotated[Optional[int], typer.Option("--awp-alternations", help="Alternations A between x' and v (1).", rich_help_panel=_W)] = None,
    awp_warmup: Annotated[Optional[int], typer.Option("--awp-warmup", help="Epochs of plain AT before AWP starts (digits 10, CIFAR 0, SVHN L-inf 5).", rich_help_panel=_W)] = None,
    awp_include_1d: Annotated[Optional[bool], typer.Option("--awp-include-1d/--awp-weights-only", help="Also perturb biases and BatchNorm parameters.", rich_help_panel=_W)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs (digits 100, CIFAR 200).", rich_help_panel=_T)] = None,
    bn_clean: Annotated[Optional[str], typer.Option("--bn-clean", help="BatchNorm statistics: reference (a clean train-mode forward after each step, like the authors' code) or frozen (BN never sees clean batches).", rich_help_panel=_T)] = None,
    lr: Annotated[Optional[str], typer.Option("--lr", help="Initial / peak learning rate eta3 (digits 0.05, CIFAR 0.1).", rich_help_panel=_T)] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help="piecewise, cosine or cyclic.", rich_help_panel=_T)] = None,
    lr_milestones: Annotated[Optional[str], typer.Option("--lr-milestones", help="Piecewise: fractions of training where lr /= 10 (0.5,0.75).", rich_help_panel=_T)] = None,
    momentum: Annotated[Optional[str], typer.Option("--momentum", help="SGD momentum (0.9).", rich_help_panel=_T)] = None,
    weight_decay: Annotated[Optional[str], typer.Option("--weight-decay", help="Weight decay (5e-4).", rich_help_panel=_T)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size (digits 30, CIFAR 128).", rich_help_panel=_T)] = None,
    eval_batch_size: Annotated[Optional[int], typer.Option("--eval-batch-size", help="Evaluation batch size.", rich_help_panel=_T)] = None,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="Fixed class-stratified training subset; 0 = all (digits 300).", rich_help_panel=_T)] = None,
    train_eval_size: Annotated[Optional[int], typer.Option("--train-eval-size", help="Training examples attacked in eval mode each epoch for the gap; 0 = all.", rich_help_panel=_T)] = None,
    val_split: Annotated[Optional[str], typer.Option("--val-split", help="Fraction of the training set held out for model selection (0).", rich_help_panel=_T)] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="Fixed test subset evaluated each epoch; 0 = all.", rich_help_panel=_T)] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Keep weights of every N-th epoch (best and last always); 0 = only those.", rich_help_panel=_R)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of initialization, shuffling and attacks (0).", rich_help_panel=_T)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Torch CPU threads; 0 = torch's default (digits: 1, robust on busy CPUs).")] = None,
    precision: PrecisionOpt = None,
    channels_last: ChannelsLastOpt = None,
    compile: CompileOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last finished epoch.", rich_help_panel=_R)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run file.", rich_help_panel=_R)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no per-epoch lines.")] = False,
    workers: WorkersOpt = 1,
    oversubscribe: OversubOpt = False,
    method_flags: Optional[dict] = None,
) -> None:
    """Adversarially train with a registered method, with or without AWP, and record every epoch in a crash-safe HDF5 run file."""
    flags = {k: v for k, v in locals().items() if k not in ("out", "config", "preset", "resume", "overwrite", "quiet", "method_flags", "workers", "oversubscribe")}
    flags["norm"] = norm.value if norm is not None else None
    import os

    from awp.distributed import check_workers, is_main_process, launch, launched_by_torchrun
    from awp.progress import ConsoleReporter
    from awp.runinfo import summary_lines
    from awp.store import open_run
    from awp.train import preflight, train
    from awp.trainconfig import format_toml, resolve_config

    cfg = resolve_config(flags, config, preset=preset, method_flags=method_flags)
    path = out if out is not None else Path("runs") / f"{cfg.dataset}-{cfg.label}.h5"
    if resume and path.exists():
        cfg = resolve_config(flags, config, stored=open_run(path).config, preset=preset, method_flags=method_flags)
    check_workers(workers, cfg.device, oversubscribe)
    if workers > 1 and launched_by_torchrun():
        raise UserError("--workers starts its own processes; under torchrun leave it out (torchrun sets the ranks)")
    quiet = quiet or not is_main_process()  # under torchrun, rank 0 speaks for all
    reporter = ConsoleReporter(quiet=quiet)
    if is_main_process():  # the other ranks would find the run file that rank 0 starts
        world = workers if workers > 1 else int(os.environ.get("WORLD_SIZE", "1"))
        preflight(cfg, path, resume=resume, overwrite=overwrite, workers=world)  # refuse before printing the config (and starting workers)
    if workers > 1:  # every check is made: the same command in `workers` data-parallel ranks
        raise typer.Exit(launch(workers, _without_workers(sys.argv[1:]), kept="every finished epoch is kept"))
    reporter.message(f"# landscape train-awp -> {path}\n{format_toml(cfg)}\n")
    result = train(cfg, path, resume=resume, overwrite=overwrite, reporter=reporter)
    if not quiet:
        typer.echo("\n".join(summary_lines(result.metrics, result.best_epoch, result.last_epoch, result.best_val_epoch,
                                           open_run(path).reported_epoch)))
        typer.echo(f"run file: {path}")


@app.command("presets")
def presets_command(
    name: Annotated[Optional[str], typer.Argument(help="A preset to print as TOML (usable with --config); none: list them all.", show_default=False)] = None,
) -> None:
    """List the paper's training settings for train-awp --preset (name and summary), or print one as TOML."""
    from awp.presets import description, names, read

    if name is not None:
        typer.echo(read(name), nl=False)
        return
    width = max(map(len, names()), default=0)
    for n in names():
        typer.echo(f"{n:<{width}}  {description(n)}")


@app.command()
def info(
    run: Annotated[Path, typer.Argument(help="Run file from train-awp.")],
    every: Annotated[int, typer.Option("--every", help="Show every N-th epoch of the table (best and last always).")] = 1,
) -> None:
    """Print a run's config and per-epoch metrics, best and last marked."""
    from awp.config import check_positive_int
    from awp.runinfo import info_text
    from awp.store import open_run

    check_positive_int(every, "--every")
    typer.echo(info_text(open_run(run), every))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run file from train-awp.")],
    epoch: Annotated[str, typer.Option("--epoch", help="best, last, best_val or an epoch number.")] = "best",
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (torch.save; loads with weights_only=True).")] = Path("model.pt"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file at --out (never a run file).")] = False,
) -> None:
    """Write one epoch's weights with architecture, dataset and normalization as a plain checkpoint."""
    from awp.store import export_checkpoint

    e = export_checkpoint(run, epoch, out, overwrite=overwrite)
    typer.echo(f"wrote epoch {e} of {run} to {out}")


# ---- landscapes: every option declared once, choices built from the registries

from awp.attacks import NORMS  # noqa: E402
from landscape.core.directions import DIRECTIONS, NORMALIZATIONS  # noqa: E402
from landscape.core.engine import BN_MODES  # noqa: E402
from landscape.core.sharpness import SHARPNESS  # noqa: E402

Norm = NORMS.choices("Norm")
DirectionNorm = NORMALIZATIONS.choices("DirectionNorm")
BNMode = BN_MODES.choices("BNMode")
Measure = SHARPNESS.choices("Measure")
DirectionKind = Enum("DirectionKind", {n: n for n, k in DIRECTIONS.items() if k.cli}, type=str)
Split = Enum("Split", {"train": "train", "test": "test"}, type=str)

_PL = "Landscape (Eq. 5, Algorithm 1)"
_PA = "Attack (default: the run's training threat model)"
_PD = "Checkpoint, model and data"

CkptArg = Annotated[Optional[Path], typer.Argument(help="Run file from train-awp, or a .pt state dict.", show_default=False)]
FromOpt = Annotated[Optional[Path], typer.Option("--from", help="Redraw the figures (and table) of RESULTS.h5; computes nothing.", rich_help_panel=_PO)]
EpochOpt = Annotated[str, typer.Option("--epoch", help="Run files: best, last, N, all or every:K (plot2d: one checkpoint).", rich_help_panel=_PD)]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "--arch", help="Model of a foreign .pt: a registry name, MODULE:CALLABLE (your own nn.Module, inputs in [0, 1]) or robustbench:NAME.", rich_help_panel=_PD)]
ModelKwargsOpt = Annotated[Optional[str], typer.Option("--model-kwargs", help="Keyword arguments of the model as JSON, e.g. '{\"depth\": 16}'.", rich_help_panel=_PD)]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="Dataset of a foreign .pt: a name, npz:PATH or folder:PATH.", rich_help_panel=_PD)]
LDataDirOpt = Annotated[Path, typer.Option("--data-dir", help="Where torchvision datasets live.", rich_help_panel=_PD)]
SplitOpt = Annotated[Split, typer.Option("--split", help="Data the loss is measured on (Algorithm 1: train).", rich_help_panel=_PD)]
SamplesOpt = Annotated[int, typer.Option("--samples", min=0, help="Fixed class-stratified subset; 0 = the whole split.", rich_help_panel=_PD)]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Examples per forward pass.", rich_help_panel=_PD)]
NormalizeOpt = Annotated[DirectionNorm, typer.Option("--normalize", help="Normalization of random and hessian directions: filter (Eq. 5), layer or none (hessian: the unit eigenvector times ||w||).", rich_help_panel=_PL)]
IncludeBnOpt = Annotated[bool, typer.Option("--include-bn", help="Give biases and BatchNorm parameters a direction too (d = w).", rich_help_panel=_PL)]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed of the random directions (seed, k), random starts and --samples.", rich_help_panel=_PL)]
BnOpt = Annotated[BNMode, typer.Option("--bn", help="eval: keep w's BN statistics; recalibrate: re-estimate them at every point.", rich_help_panel=_PL)]
BnBatchesOpt = Annotated[int, typer.Option("--bn-batches", min=1, help="Training batches per BN recalibration.", rich_help_panel=_PL)]
PgdOpt = Annotated[int, typer.Option("--pgd", min=0, help="PGD steps K1 at every point; 0 = natural loss landscape.", rich_help_panel=_PA)]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="Radius in pixels, e.g. 8/255.", rich_help_panel=_PA)]
PgdStepOpt = Annotated[Optional[str], typer.Option("--pgd-step", help="PGD step eta1 (default: the training step, or eps/4).", rich_help_panel=_PA)]
NormOpt = Annotated[Optional[Norm], typer.Option("--norm", help="Threat model.", rich_help_panel=_PA)]
PointsOpt = Annotated[str, typer.Option("--points-per-batch", help="Weight points evaluated together in one vmapped pass (torch.func), each with its own PGD; 1 = one at a time; auto: 1 on CPU (no gain measured there), on CUDA up to 16 with P x batch size <= 4096.", rich_help_panel=_PO)]
ChunkOpt = Annotated[Optional[int], typer.Option("--chunk", min=1, help="Points per process between flushes of the results file (default: one direction for probe, 4 for plot2d).", rich_help_panel=_PO)]
LDeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=_PO)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Results file (.h5); figures go beside it.", rich_help_panel=_PO)]
ResumeOverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Start over instead of resuming -o.", rich_help_panel=_PO)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=_PO)]


def _json_object(text: Optional[str], flag: str, example: str) -> Optional[dict]:
    """A flag's JSON object (None when not given); anything else one line naming the flag and an example."""
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{flag} {text!r} is not JSON ({e.msg}); give an object, e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} {text!r} is not a JSON object; give e.g. '{example}'")
    return value


def _kwargs_json(text: Optional[str]) -> Optional[dict]:
    return _json_object(text, "--model-kwargs", '{"depth": 16}')


def _landscape_flags(
    epoch: EpochOpt = "last", model: ModelOpt = None, model_kwargs: ModelKwargsOpt = None, dataset: DatasetOpt = None,
    data_dir: LDataDirOpt = Path("data"), split: SplitOpt = Split.train, samples: SamplesOpt = 0, batch_size: BatchOpt = 256,
    normalize: NormalizeOpt = DirectionNorm.filter, include_bn: IncludeBnOpt = False, seed: SeedOpt = 0,
    bn: BnOpt = BNMode.eval, bn_batches: BnBatchesOpt = 8, pgd: PgdOpt = 10, eps: EpsOpt = None,
    pgd_step: PgdStepOpt = None, norm: NormOpt = None, chunk: ChunkOpt = None, points_per_batch: PointsOpt = "auto", workers: WorkersOpt = 1,
    oversubscribe: OversubOpt = False, device: LDeviceOpt = "auto", out: OutOpt = None,
    overwrite: ResumeOverwriteOpt = False, quiet: QuietOpt = False,
    precision: PrecisionOpt = "fp32", channels_last: ChannelsLastOpt = False, compile: CompileOpt = False,
) -> None:
    """The flags every landscape command shares, declared once: `with_landscape_flags` adds them."""


def with_landscape_flags(command):
    """Give a landscape command the flags of `_landscape_flags` besides its own; it receives them, as
    parsed by typer, in one dict `flags` (turned into `LandscapeOptions` fields by `_options`)."""
    import inspect

    shared = inspect.signature(_landscape_flags, eval_str=True).parameters
    return with_extra_options(command, "flags", list(shared.values()), dict)


def _options(ckpt: Path, flags: dict) -> dict:
    """The `LandscapeOptions` fields every landscape command shares, from its parsed flags."""
    from awp.config import parse_fraction

    f = flags
    return dict(
        checkpoint=str(ckpt), epochs=f["epoch"], arch=f["model"], arch_kwargs=_kwargs_json(f["model_kwargs"]),
        dataset=f["dataset"], data_dir=str(f["data_dir"]), split=f["split"].value, samples=f["samples"],
        batch_size=f["batch_size"], normalize=f["normalize"].value, include_bn=f["include_bn"], seed=f["seed"],
        bn=f["bn"].value, bn_batches=f["bn_batches"], steps=f["pgd"],
        eps=parse_fraction(f["eps"], "--eps") if f["eps"] is not None else None,
        step_size=parse_fraction(f["pgd_step"], "--pgd-step") if f["pgd_step"] is not None else None,
        norm=f["norm"].value if f["norm"] else None, chunk=f["chunk"], points_per_batch=f["points_per_batch"], workers=f["workers"], device=f["device"],
        out=str(f["out"]) if f["out"] else None, overwrite=f["overwrite"], progress=not f["quiet"],
        precision=f["precision"], channels_last=bool(f["channels_last"]), compile=bool(f["compile"]),
    )


def _without_workers(argv: list[str]) -> list[str]:
    """The command line minus --workers N and --oversubscribe, to hand to torchrun."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers=") and a != "--oversubscribe":
            out.append(a)
    return out


def _run_landscape(cfg, plan, run, oversubscribe: bool) -> None:
    """One process, or `--workers N` of them (every check made first, here, before they start)."""
    from awp.distributed import check_workers, launch

    check_workers(cfg.workers, cfg.device, oversubscribe)
    if cfg.workers > 1:
        plan(cfg)
        raise typer.Exit(launch(cfg.workers, _without_workers(sys.argv[1:])))
    run(cfg)


def _compute_or_redraw(ckpt: Optional[Path], from_results: Optional[Path]) -> bool:
    if from_results is not None and ckpt is not None:
        raise UserError("give CKPT to compute or --from RESULTS.h5 to redraw, not both")
    if from_results is None and ckpt is None:
        raise UserError("missing CKPT (a run file or .pt), or --from RESULTS.h5")
    return from_results is None


# The direction kinds, their help from the registry's summaries (probe takes every one the CLI makes,
# plot2d those that give a plane).
_KINDS_HELP = "; ".join(f"{n}: {k.summary}" for n, k in DIRECTIONS.items() if k.cli)
DirectionOpt = Annotated[DirectionKind, typer.Option("--direction", help=f"Direction kind. {_KINDS_HELP}.", rich_help_panel=_PL)]
ParamsOpt = Annotated[Optional[str], typer.Option("--params", help="Move only these parameters: comma-separated globs on their names (fnmatch), e.g. 'net.3.*' or 'layer4.*,linear.weight'; every other parameter stays at w bit for bit.", rich_help_panel=_PL)]
PerLayerOpt = Annotated[bool, typer.Option("--per-layer", help="Each block (the module owning parameters, of --params if given) in turn: probe's --dirs directions, or every measure, per block; the tables and figures group them by block (sharpness over --epoch all: by layer over epochs).", rich_help_panel=_PL)]
GammaOpt = Annotated[Optional[str], typer.Option("--gamma", help="--direction awp: gamma of Eq. 8 (default 5e-3, AWPConfig's; with one ascent step from v = 0 it sets only where alpha = gamma, AWP's own point, lies).", rich_help_panel=_PL)]


def _gamma(text: Optional[str]) -> Optional[float]:
    from awp.config import parse_fraction

    return parse_fraction(text, "--gamma") if text is not None else None


@app.command()
@with_landscape_flags
def probe(
    ckpt: CkptArg = None,
    from_results: FromOpt = None,
    alphas: Annotated[str, typer.Option("--alphas", help="MIN:MAX:NUM, with MIN < 0 < MAX.", rich_help_panel=_PL)] = "-1:1:41",
    dirs: Annotated[Optional[int], typer.Option("--dirs", min=1, help="Directions (per block with --per-layer): default 10 random ones (Appendix B.2 uses 10), 1 of the other kinds; hessian: the top N eigenvectors; pca: 1 (PC1) or 2 (PC1, PC2).", rich_help_panel=_PL, show_default=False)] = None,
    direction: DirectionOpt = DirectionKind.random,
    to: Annotated[Optional[str], typer.Option("--to", help="interpolate: where the line leads: an epoch of the same run (best, last, N), another run file OTHER.h5 (its reported epoch: the last, AT-ES's best) or OTHER.h5:EPOCH, or a .pt; the architectures must fit.", rich_help_panel=_PL)] = None,
    gamma: GammaOpt = None,
    params: ParamsOpt = None,
    per_layer: PerLayerOpt = False,
    radius: Annotated[Optional[str], typer.Option("--radius", help="|alpha| of the sharpness measures (default: half the range).", rich_help_panel=_PL)] = None,
    fixed_adv: Annotated[bool, typer.Option("--fixed-adv", help="Ablation: examples made once at w, reused at every point.", rich_help_panel=_PA)] = False,
    png: Annotated[Optional[Path], typer.Option("--png", help="Figure; default beside the results file (HTML beside it).", rich_help_panel=_PO)] = None,
    *, flags: dict,
) -> None:
    """The 1-D weight loss landscape rho(w + alpha d) with PGD on the fly, along repeated directions, with sharpness."""
    from awp.config import parse_fraction
    from landscape.commands.probe import ProbeConfig, plan, rerender, run_probe

    r = parse_fraction(radius, "--radius") if radius is not None else None
    if not _compute_or_redraw(ckpt, from_results):
        rerender(from_results, str(png) if png else None, r, overwrite=flags["overwrite"])
        return
    cfg = ProbeConfig(**_options(ckpt, flags), alphas=alphas, dirs=dirs, direction=direction.value, to=to,
                      gamma=_gamma(gamma), params=params, per_layer=per_layer, fixed_adv=fixed_adv, radius=r,
                      png=str(png) if png else None)
    _run_landscape(cfg, plan, run_probe, flags["oversubscribe"])


_PC = "Cluster (shards of the grid, `landscape merge`)"

from landscape.pipeline.launch import LAUNCHERS  # noqa: E402

Launcher = LAUNCHERS.choices("Launcher")
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="K/N: compute only shard K of N of the grid (1 <= K <= N) into its own resumable results file (default NAME-shardKofN.h5); `landscape merge` combines the N.", rich_help_panel=_PC)]
LauncherOpt = Annotated[Optional[Launcher], typer.Option("--launcher", help="Submit the --shards as one job array, wait, merge: submitit (SLURM where there is one, else local processes) or submitit-local (pip install 'awp-landscape\\[slurm]').", rich_help_panel=_PC)]
ShardsOpt = Annotated[Optional[int], typer.Option("--shards", min=1, help="With --launcher: how many shard jobs.", rich_help_panel=_PC)]
LauncherFolderOpt = Annotated[Optional[Path], typer.Option("--launcher-folder", help="With --launcher: where job logs go (default NAME-jobs/ beside the results file).", rich_help_panel=_PC)]
LauncherParamsOpt = Annotated[Optional[str], typer.Option("--launcher-params", help="With --launcher: submitit executor parameters as JSON, e.g. '{\"timeout_min\": 240, \"slurm_partition\": \"gpu\", \"gpus_per_node\": 1}' (submitit's default time limit is 5 min).", rich_help_panel=_PC)]


def _launcher_params(text: Optional[str]) -> Optional[dict]:
    return _json_object(text, "--launcher-params", '{"timeout_min": 240}')


@app.command()
@with_landscape_flags
def plot2d(
    ckpt: CkptArg = None,
    from_results: FromOpt = None,
    grid: Annotated[str, typer.Option("--grid", help="Points along alpha x beta, e.g. 21x21 or 31x11.", rich_help_panel=_PL)] = "21x21",
    span: Annotated[str, typer.Option("--range", help="AMIN:AMAX,BMIN:BMAX (one span: both axes).", rich_help_panel=_PL)] = "-1:1,-1:1",
    direction: DirectionOpt = DirectionKind.random,
    gamma: GammaOpt = None,
    shard: ShardOpt = None,
    launcher: LauncherOpt = None,
    shards: ShardsOpt = None,
    launcher_folder: LauncherFolderOpt = None,
    launcher_params: LauncherParamsOpt = None,
    *, flags: dict,
) -> None:
    """The 2-D landscape |g(alpha, beta) - g(0, 0)| with PGD on the fly (Appendix B.2), along random directions d, e (default), the top two Hessian eigenvectors, the training trajectory's PC1 and PC2 (path drawn) or AWP's direction and a random one; resumable; torchrun-ready; shards for any cluster."""
    from landscape.commands.plot2d import Plot2DConfig, launch_plot2d, plan, rerender, run_plot2d
    from landscape.pipeline.launch import parse_shard

    if not _compute_or_redraw(ckpt, from_results):
        rerender(from_results, overwrite=flags["overwrite"])
        return
    if (launcher is None) != (shards is None):
        raise UserError("--launcher and --shards go together: --launcher submitit --shards N submits N shard jobs "
                        "(for one shard here, give --shard K/N)")
    if launcher is None and (launcher_folder is not None or launcher_params is not None):
        raise UserError("--launcher-folder and --launcher-params need --launcher submitit or submitit-local, and --shards N")
    cfg = Plot2DConfig(**_options(ckpt, flags), grid=grid, range=span, shard=parse_shard(shard) if shard is not None else None,
                       direction=direction.value, gamma=_gamma(gamma))
    if launcher is not None:
        launch_plot2d(cfg, launcher.value, shards, launcher_folder, _launcher_params(launcher_params))
        return
    _run_landscape(cfg, plan, run_plot2d, flags["oversubscribe"])


@app.command()
def merge(
    out: Annotated[Path, typer.Argument(metavar="OUT.h5", help="The merged results file: written, or completed when it holds some points already; figures go beside it.", show_default=False)],
    shards: Annotated[Optional[list[Path]], typer.Argument(metavar="SHARD.h5", help="Results files of `plot2d --shard K/N` (any subset, in any order; repeats are harmless).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT instead of adding to the points it holds.")] = False,
) -> None:
    """Combine plot2d shards (same settings, any scheduler) into one results file; a complete grid gets plot2d's figures."""
    from landscape.commands.plot2d import merge_plot2d

    merge_plot2d(out, list(shards or []), overwrite=overwrite)


# ---- sharpness: the menu of measures (landscape.core.measures), its parameters' flags built from the registry

_SM = "Measures (each flag for the measures that name it)"


def with_measure_flags(command):
    """Give `command` one option per parameter of `MEASURE_PARAMS` (e.g. --xi-avg, --pac-threshold), its
    help naming the measures that read it; it receives the given ones as `measure_params` = {name: text}."""
    import inspect

    from landscape.core.measures import MEASURE_PARAMS, param_flag

    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
            param_flag(name), help=f"{p.help} (default {p.default!r}).", rich_help_panel=_SM)])
        for name, p in MEASURE_PARAMS.items()
    ]
    return with_extra_options(command, "measure_params", extra, lambda values: {k: v for k, v in values.items() if v is not None})


def _measures_help() -> str:
    from landscape.core.measures import DEFAULT_MEASURES, MEASURES

    lines = "; ".join(f"{n}: {k.help()}" for n, k in MEASURES.items())
    return f"Comma-separated measures, or all (default: {','.join(DEFAULT_MEASURES)}). {lines}."


@app.command()
@with_measure_flags
@with_landscape_flags
def sharpness(
    ckpt: Annotated[Path, typer.Argument(help="Run file from train-awp, or a .pt state dict.", show_default=False)],
    measures: Annotated[Optional[str], typer.Option("--measures", help=_measures_help(), rich_help_panel=_SM)] = None,
    params: ParamsOpt = None,
    per_layer: PerLayerOpt = False,
    png: Annotated[Optional[Path], typer.Option("--png", help="Figure; default beside the results file (HTML beside it).", rich_help_panel=_PO)] = None,
    *, flags: dict, measure_params: dict,
) -> None:
    """A menu of robust sharpness measures (rise, curvature, Stutz flatness, adaptive, PAC-Bayes, Hessian) with PGD re-run at every weight point; per layer; resumable."""
    from landscape.commands.sharpness import SharpnessConfig, run_sharpness

    cfg = SharpnessConfig(**_options(ckpt, flags), measures=measures, params=params, per_layer=per_layer,
                          measure_params=measure_params, png=str(png) if png else None)
    run_sharpness(cfg)


# ---- eval

_E = "Attacks (the paper's Tables 1-3)"

from awp.robustness.attacks import DEFAULT_ATTACKS  # noqa: E402


def _aa_versions():
    from awp.robustness.autoattack import AA_VERSIONS

    return AA_VERSIONS.choices("AAVersion")


AAVersion = _aa_versions()


@app.command("eval")
def eval_command(
    ckpt: CkptArg = None,
    attacks: Annotated[str, typer.Option("--attacks", help="Comma-separated: natural, fgsm, pgdK (pgd = pgd20), cwK (cw = cw100: CW-inf, PGD on the CW margin), autoattack (pip install 'awp-landscape\\[autoattack]'). natural is always run.", rich_help_panel=_E)] = DEFAULT_ATTACKS,
    epoch: EpochOpt = "last",
    model: ModelOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: LDataDirOpt = Path("data"),
    eps: Annotated[Optional[str], typer.Option("--eps", help="Radius in pixels, e.g. 8/255 (default: the run's training eps).", rich_help_panel=_E)] = None,
    norm: NormOpt = None,
    step_size: Annotated[Optional[str], typer.Option("--step-size", help="PGD/CW step (default eps/4: the paper's 2/255 at 8/255).", rich_help_panel=_E)] = None,
    restarts: Annotated[int, typer.Option("--restarts", help="Random restarts of PGD and CW; an example counts as robust only if no restart fools the model.", rich_help_panel=_E)] = 1,
    aa_version: Annotated[AAVersion, typer.Option("--aa-version", help="AutoAttack version (standard is RobustBench's).", rich_help_panel=_E)] = AAVersion.standard,
    samples: Annotated[int, typer.Option("--samples", help="Fixed class-stratified test subset; 0 = the whole test set.", rich_help_panel=_PD)] = 0,
    batch_size: BatchOpt = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --samples and of every random start.", rich_help_panel=_E)] = 0,
    device: LDeviceOpt = "auto",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON results (default beside CKPT: NAME-eval.json); per-example results beside it (.examples.h5), which an interrupted run resumes from.", rich_help_panel=_PO)] = None,
    overwrite: ResumeOverwriteOpt = False,
    quiet: QuietOpt = False,
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = False,
    compile: CompileOpt = False,
) -> None:
    """Robust accuracy under FGSM, PGD-K, CW-inf and AutoAttack, per example and the worst case over them; JSON with RobustBench's fields; resumable."""
    from awp.config import parse_fraction
    from landscape.commands.evaluate import EvalConfig, run_eval

    run_eval(EvalConfig(
        checkpoint=str(ckpt) if ckpt is not None else None, attacks=attacks, epochs=epoch, arch=model,
        arch_kwargs=_kwargs_json(model_kwargs), dataset=dataset, data_dir=str(data_dir),
        eps=parse_fraction(eps, "--eps") if eps is not None else None, norm=norm.value if norm else None,
        step_size=parse_fraction(step_size, "--step-size") if step_size is not None else None, restarts=restarts,
        samples=samples, batch_size=batch_size, seed=seed, aa_version=aa_version.value, device=device,
        out=str(out) if out else None, overwrite=overwrite, progress=not quiet, precision=precision,
        channels_last=bool(channels_last), compile=bool(compile)))


# ---- gap / report

_GL = "Landscapes (probed every K epochs, cached beside each run)"


def _gap_config(runs: list[Path], every: int, sharpness: Measure, dirs: int, alphas: str, pgd: Optional[int],
                samples: int, seed: int, device: str, quiet: bool, overwrite: bool, out_dir: Path = Path("figures"),
                prefix: str = "gap", measures: Optional[str] = None):
    from landscape.commands.analysis import GapConfig

    return GapConfig(runs=tuple(str(r) for r in runs), every=every, sharpness=sharpness.value, measures=measures, dirs=dirs, alphas=alphas,
                     steps=pgd, samples=samples, seed=seed, device=device, out_dir=str(out_dir), prefix=prefix,
                     progress=not quiet, overwrite=overwrite)


RunsArg = Annotated[list[Path], typer.Argument(help="Run files from train-awp.", show_default=False)]
EveryOpt = Annotated[int, typer.Option("--every", min=1, help="Probe every K-th epoch, plus best and last.", rich_help_panel=_GL)]
SharpOpt = Annotated[Measure, typer.Option("--sharpness", help="The x axis: a sharpness measure (as probe reports them).", rich_help_panel=_GL)]
GDirsOpt = Annotated[int, typer.Option("--dirs", min=1, help="Directions per checkpoint.", rich_help_panel=_GL)]
GAlphasOpt = Annotated[str, typer.Option("--alphas", help="MIN:MAX:NUM.", rich_help_panel=_GL)]
GPgdOpt = Annotated[Optional[int], typer.Option("--pgd", min=0, help="PGD steps (default: the run's training steps).", rich_help_panel=_GL)]
GSamplesOpt = Annotated[int, typer.Option("--samples", min=0, help="Fixed class-stratified training subset.", rich_help_panel=_GL)]
GSeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed of directions, random starts and --samples.", rich_help_panel=_GL)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs that an earlier run of this command on these runs did not write.")]
GQuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
GMeasuresOpt = Annotated[Optional[str], typer.Option("--measures", help="Also test these sharpness measures against the gap (as `landscape sharpness --measures`, their default parameters; all: every one), each within and across runs, per setting (method, dataset), ranked with Holm-adjusted p-values; cached beside each run (RUN.measures.h5).", rich_help_panel=_GL)]


@app.command()
def gap(
    runs: RunsArg,
    every: EveryOpt = 10,
    sharpness: SharpOpt = Measure.rise,
    dirs: GDirsOpt = 3,
    alphas: GAlphasOpt = "-1:1:11",
    pgd: GPgdOpt = None,
    samples: GSamplesOpt = 200,
    seed: GSeedOpt = 0,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where figures go (PNG and HTML).")] = Path("figures"),
    prefix: Annotated[str, typer.Option("--prefix", help="File-name prefix of the figures.")] = "gap",
    measures: GMeasuresOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: GQuietOpt = False,
) -> None:
    """Robust generalization gap vs landscape sharpness over epochs and runs (Figure 1), with valid tests; --measures ranks many."""
    from landscape.commands.gap import run_gap

    run_gap(_gap_config(runs, every, sharpness, dirs, alphas, pgd, samples, seed, device, quiet, overwrite, out_dir, prefix,
                        measures))


@app.command()
def report(
    runs: RunsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file.")] = Path("report.html"),
    title: Annotated[str, typer.Option("--title", help="The report's heading.")] = "Weight loss landscape report",
    every: EveryOpt = 10,
    sharpness: SharpOpt = Measure.rise,
    dirs: GDirsOpt = 3,
    alphas: GAlphasOpt = "-1:1:11",
    pgd: GPgdOpt = None,
    samples: GSamplesOpt = 200,
    seed: GSeedOpt = 0,
    measures: GMeasuresOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: GQuietOpt = False,
) -> None:
    """One self-contained, offline HTML report: configs, curves, landscapes, 2-D plots, gap vs sharpness (and --measures ranked)."""
    from landscape.commands.report import write_report

    path = write_report(_gap_config(runs, every, sharpness, dirs, alphas, pgd, samples, seed, device, quiet, overwrite,
                                    measures=measures), out, title)
    typer.echo(f"report: {path}")


# --------------------------------------------------------------------------------------------- entry


def _say(line: str) -> None:
    """One line on stderr; under torchrun only rank 0 speaks, and under `--workers` it leaves the line
    for the launcher, which prints it once."""
    import os

    rank = os.environ.get("RANK")
    if rank not in (None, "0"):
        return
    path = os.environ.get(ERROR_FILE_ENV)
    if rank == "0" and path:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(line)
        return
    typer.echo(line, err=True)


def _one_line_kernel_warnings() -> None:
    """An `awp.kernels.KernelWarning` (e.g. --compile falling back) as one `warning: ...` line on stderr,
    from rank 0 only; every other warning as Python shows it."""
    import os
    import warnings

    from awp.kernels import KernelWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, KernelWarning):
            return show(message, category, filename, lineno, file, line)
        if os.environ.get("RANK") in (None, "0"):
            typer.echo(f"warning: {message}", err=True)

    warnings.showwarning = showwarning


def main(argv: Optional[list[str]] = None) -> None:
    """Run the app; user mistakes become one `error: ...` line on stderr and exit status 2."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # --model mynets:Net finds mynets.py in the working directory, as `python -m` would
    _one_line_kernel_warnings()
    try:
        rc = command.main(args=argv, prog_name="landscape", standalone_mode=False)
    except UserError as e:
        _say(f"error: {e}")
        sys.exit(2)
    except Interrupted as e:
        _say(f"interrupted: {e}; resume with: {resume_command(args)}")
        sys.exit(130)
    except (typer.Abort, KeyboardInterrupt):
        rc = 130
    except Exception as e:
        # Usage errors (bad option value, unknown command): click's and typer's vendored click alike
        # carry `format_message()` and `exit_code`; anything else is a bug and keeps its traceback.
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        typer.echo("error: " + " ".join(e.format_message().split()), err=True)
        sys.exit(2)
    if rc == 130:
        typer.echo("interrupted; completed work is kept", err=True)
    sys.exit(rc if isinstance(rc, int) else 0)

if __name__ == "__main__":
    main()
