"""`landscape demo`: the whole study on the embedded digits, in minutes on 2 CPU cores.

For each seed it trains AT and AT-AWP (evaluated every epoch, their landscapes probed over epochs:
Figure 1a, claims 1-4) and the method zoo of Figure 1(b), TRADES, MART, RST, AT-ES and natural training
(evaluated every `ZOO_EVAL_EVERY` epochs, each probed at the checkpoint it reports: claims 2b and 5); it
judges the paper's qualitative claims on the numbers it just computed (`landscape.core.claims`: every
part from an interval), and over several seeds again with the seeds as the units. It writes the
Figure-1 figures and `report.html`. `--full` adds the zoo's AWP variants and evaluates it every epoch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from awp.config import check_seed
from awp.data import dataset_labels, stratified_split
from awp.errors import Interrupted, UserError
from awp.rundata import RunData, take
from awp.safeio import check_dir, check_output, provenance, signed
from awp.stopping import graceful_stop, stop_requested
from awp.store import RunReader, open_run
from awp.trainconfig import TrainConfig
from landscape.core import claims as cl
from landscape.figures import study as figures
from landscape.commands.analysis import (
    GapConfig, GapTests, RunAnalysis, check_figures, gap_tests, landscape_path, probe_run, proportion_se, run_curves,
)
from landscape.core.claims import Checkpoint, Claim
from landscape.commands.probe import ProbeConfig, run_probe
from landscape.commands.report import write_report
from landscape.core.stats import HOLDS, FAILS

SELECT_SEED = 0  # which half of the test set chooses the best epoch (the same halves for every run)

MAIN = ("at", "at-awp")  # trained and probed over epochs (Figure 1a; claims 1-4)
ZOO = ("trades", "mart", "rst", "at-es", "natural")  # Figure 1(b): probed at the checkpoint each reports
PAPER_ZOO = ("trades", "mart", "rst", "at-es")  # the methods of the paper's Figure 1(b), tested against AT (claim 5)
# Natural training is drawn and tabled but left out of the tests: its robust accuracy is near 0 on both
# splits, so its "gap" says nothing about robust generalization.
# The time budget (10 minutes on 2 CPU cores): the default demo measures train/test robustness of AT and
# AT-AWP every 5th epoch and of the zoo every 10th (and at the last, and AT-ES at each new validation best).
MAIN_EVAL_EVERY = 5
ZOO_EVAL_EVERY = 10


def parse_seeds(text: str, flag: str = "--seeds") -> tuple[int, ...]:
    """'0,1,2' or '3' -> (0, 1, 2) / (3,): distinct seeds, each checked."""
    try:
        seeds = tuple(int(s) for s in text.replace(" ", "").split(",") if s != "")
    except ValueError:
        raise UserError(f"{flag} must be integers separated by commas like 0,1,2, got {text!r}") from None
    if not seeds:
        raise UserError(f"{flag} needs at least one seed, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{flag} repeats a seed: {text!r}; each seed is one independent training")
    for s in seeds:
        check_seed(s, flag)
    return seeds


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; `quick` shrinks everything for the test suite (seconds, not minutes)."""

    seeds: tuple[int, ...] = (0, 1)
    quick: bool = False
    full: bool = False  # also the zoo's AWP variants, every run evaluated every epoch
    runs_dir: str = "runs/demo"
    figures_dir: str = "figures"
    report: str = "report.html"
    device: str = "cpu"
    progress: bool = True
    overwrite: bool = False  # replace figures, report and demo runs made with other settings
    workers: int = 1  # processes that train and probe the runs side by side

    @property
    def labels(self) -> tuple[str, ...]:
        """The runs of one seed: AT, AT-AWP, the zoo (and with `full` the zoo's AWP variants)."""
        zoo = ZOO + tuple(f"{m}-awp" for m in PAPER_ZOO) if self.full else ZOO
        return MAIN + zoo

    def run_paths(self, seed: int) -> list[Path]:
        suffix = "-quick" if self.quick else "-full" if self.full else ""
        return [Path(self.runs_dir) / f"digits-{m}-seed{seed}{suffix}.h5" for m in self.labels]

    def all_runs(self) -> list[Path]:
        return [p for s in self.seeds for p in self.run_paths(s)]

    def train_flags(self, method: str, seed: int) -> dict:
        flags = {"dataset": "digits", "method": method, "seed": seed, "device": self.device}
        if not self.full:
            main, zoo = (2, 4) if self.quick else (MAIN_EVAL_EVERY, ZOO_EVAL_EVERY)  # quick: probed every 2nd epoch
            flags["eval_every"] = main if method in MAIN else zoo
        if self.quick:
            flags.update(epochs=8, train_size=100, train_eval_size=100, test_size=200, awp_warmup=2, train_steps=3,
                         eval_steps=3)
        return flags

    def gap_config(self, runs: list[str], zoo: bool = False) -> GapConfig:
        """How runs are probed: over epochs (AT, AT-AWP), or for the zoo at the checkpoint each reports."""
        return GapConfig(
            runs=tuple(runs), every=2 if self.quick else 10, epochs="reported" if zoo else None,
            dirs=2 if self.quick else 3, alphas="-1:1:7" if self.quick else "-1:1:11",
            samples=50 if self.quick else 200, seed=0, device=self.device, out_dir=self.figures_dir,
            prefix="demo", progress=self.progress, overwrite=self.overwrite,
        )

    def probe_config_of(self, label: str, run: str) -> GapConfig:
        return self.gap_config([run], zoo=label not in MAIN)


def default_workers(seeds: tuple[int, ...], device: str, full: bool = False) -> int:
    """One process per usable CPU core, at most one per run; one on a GPU."""
    from awp.config import resolve_device
    from awp.distributed import usable_cpus

    if resolve_device(device).type == "cuda":
        return 1
    return max(1, min(usable_cpus(), len(seeds) * len(DemoConfig(full=full).labels)))


def _train_one(cfg: DemoConfig, method: str, seed: int, path: Path, console: Console) -> None:
    """Train (or resume, or reuse) one demo run."""
    from awp.progress import ConsoleReporter
    from awp.train import train
    from awp.trainconfig import resolve_config

    tcfg = resolve_config(cfg.train_flags(method, seed))
    quiet = not cfg.progress or console.quiet
    try:  # a finished run from an earlier demo is reused; an interrupted one continues
        train(tcfg, path, resume=True, reporter=ConsoleReporter(quiet=quiet))
    except UserError as e:
        if "the config differs" not in str(e):
            raise
        if not cfg.overwrite:
            raise UserError(f"{e}; pass --overwrite to train the demo's run again") from None
        console.print(f"{path}: made with other settings; training it again")
        train(tcfg, path, overwrite=True, reporter=ConsoleReporter(quiet=quiet))


def _prepare_run(cfg: DemoConfig, method: str, seed: int, path: str) -> str:
    """In a worker process: one run trained and its landscapes probed into the cache beside it."""
    from landscape.commands.analysis import probe_run

    torch.set_num_threads(1)
    _train_one(cfg, method, seed, Path(path), Console(quiet=True))
    probe_run(cfg.probe_config_of(method, path), path)
    return path


def _prepare_all(cfg: DemoConfig, console: Console) -> list[str]:
    """Every run trained and probed: one after the other with progress bars (`workers` 1), or in
    `workers` processes of a standard process pool, one line per finished run. Each run is
    deterministic on CPU, so both give the same files."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import active_children, get_context

    # The slowest first (RST trains on twice the examples), so the pool does not end on one long run.
    jobs = [(m, s, str(p)) for s in cfg.seeds for m, p in zip(cfg.labels, cfg.run_paths(s))]
    jobs.sort(key=lambda j: (j[0] not in MAIN, not j[0].startswith("rst")))
    if cfg.workers <= 1:
        for method, seed, path in jobs:
            console.rule(f"training {method}, seed {seed}")
            _train_one(cfg, method, seed, Path(path), console)
        return [str(p) for p in cfg.all_runs()]
    console.rule(f"training and probing {len(jobs)} runs in {cfg.workers} processes")
    t0, finished, stopping, signalled = time.perf_counter(), 0, False, False
    with graceful_stop(), ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_prepare_run, cfg, *job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in done:
                if f.cancelled():
                    continue
                try:
                    f.result()
                except Interrupted:
                    stopping = True
                    continue
                finished += 1
                elapsed = time.perf_counter() - t0
                method, seed, path = futures[f]
                console.print(f"{path}: {method}, seed {seed}, trained and probed ({finished}/{len(jobs)}, "
                              f"{elapsed:.0f} s, about {elapsed / finished * (len(jobs) - finished):.0f} s left)",
                              highlight=False)
            if (stop_requested() or stopping) and not signalled:
                # Ctrl-C: start nothing new, and ask the running workers (if the signal did not reach
                # them) to stop after their current step; what they finished is kept.
                signalled = stopping = True
                for f in pending:
                    f.cancel()
                for child in active_children():
                    os.kill(child.pid, signal.SIGTERM)
    if stopping:
        raise Interrupted(f"stopped with {finished} of {len(jobs)} runs ready; every finished epoch and landscape "
                          f"point is kept")
    return [str(p) for p in cfg.all_runs()]


FIGURES = ("demo-curves.png", "demo-landscapes.png", "demo-gap-vs-sharpness.png", "demo-methods.png")


def check_outputs(cfg: DemoConfig) -> str:
    """Before training: the runs, figures and report may be written; returns the figures' provenance tag."""
    from awp.train import check_run_output

    runs = cfg.all_runs()
    check_dir(cfg.runs_dir, "--runs-dir")
    for run in runs:
        check_run_output(run, resume=True, overwrite=False)
    fig_tag = check_figures(cfg.gap_config([str(r) for r in runs]), list(FIGURES), "demo", "--figures-dir")
    report = Path(cfg.report)
    check_output(report, "--report", inputs=runs, overwrite=cfg.overwrite, writes="report",
                 tag=provenance("report", runs, report.parent))
    return fig_tag


# ---------------------------------------------------------------------------------------------
# Evidence: per-example robust correctness of checkpoints, and per-direction sharpness
# ---------------------------------------------------------------------------------------------


@dataclass
class _RunContext:
    """What attacking any checkpoint of one run needs, built once per run: its reader, config, data
    and one model whose weights are swapped per epoch."""

    reader: RunReader
    config: TrainConfig
    data: RunData
    model: torch.nn.Module


class Correctness:
    """Per-example robust correctness of run checkpoints under each run's evaluation attack (eval mode,
    the run's seeded random starts), cached: claims (1) and (3) share AT's last checkpoint."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._cache: dict[tuple[str, int, str], np.ndarray] = {}
        self._runs: dict[str, _RunContext] = {}

    def run(self, run: str | Path) -> _RunContext:
        if str(run) not in self._runs:
            reader = open_run(run)
            model = reader.build_model(reader.last_epoch, self.device)
            self._runs[str(run)] = _RunContext(reader, reader.train_config(), reader.data(), model)
        return self._runs[str(run)]

    def __call__(self, run: str | Path, epoch: int, which: str, idx: np.ndarray | None = None) -> np.ndarray:
        """[N] 1/0 on the run's fixed training subset ('train') or test set ('test'), or on test examples
        `idx` only ('select')."""
        from awp.evaluate import robust_correct

        key = (str(run), epoch, which)
        if key not in self._cache:
            ctx = self.run(run)
            data = ctx.data
            ds = data.train_eval if which == "train" else data.test if which == "test" else take(data.test, idx)
            ctx.reader.load_into(ctx.model, epoch)
            self._cache[key] = robust_correct(ctx.model, ds, ctx.config.eval_attack, batch_size=ctx.config.eval_batch_size,
                                              device=self.device, seed=ctx.config.seed).numpy()
        return self._cache[key]


@dataclass(frozen=True)
class Selection:
    """The best epoch, chosen on examples that do not measure it (no winner's curse)."""

    epoch: int
    how: str  # said in the output
    measure: np.ndarray  # indices of the test examples that measure it


def select_best(run: str | Path, correct: Correctness, console: Console | None = None) -> Selection:
    """The run's validation-split best epoch if it was trained with `--val-split`; otherwise the saved
    epoch with the highest robust accuracy on one (class-stratified) half of the test set, the other
    half measuring it. Ties go to the earliest epoch."""
    ctx = correct.run(run)
    reader, test = ctx.reader, ctx.data.test
    if reader.best_val_epoch is not None:
        return Selection(reader.best_val_epoch, "chosen on the validation split", np.arange(len(test)))
    choose, measure = stratified_split(dataset_labels(test), len(test) // 2, SELECT_SEED)
    epochs = reader.epochs_saved()
    if console is not None:
        console.print(f"{Path(run).name}: choosing the best of {len(epochs)} saved epochs on {len(choose)} test examples")
    scores = [float(np.nanmean(correct(run, e, "select", choose))) for e in epochs]
    best = epochs[int(np.argmax(scores))]
    return Selection(best, f"chosen on {len(choose)} other test examples", np.sort(measure))


def _checkpoint(a: RunAnalysis, epoch: int, correct: Correctness, sharp: str, measure: np.ndarray | None = None) -> Checkpoint:
    test = correct(a.curves.path, epoch, "test")
    at = np.flatnonzero(a.epochs == epoch)
    dirs = a.directions[sharp][at[0]] if len(at) else np.zeros(0)
    se = float(a.sharpness_se[sharp][at[0]]) if len(at) else float("nan")
    return Checkpoint(epoch, correct(a.curves.path, epoch, "train"), test if measure is None else test[measure],
                      dirs[np.isfinite(dirs)], se)


def _overfitting(a: RunAnalysis, correct: Correctness, sharp: str, seed: int, console: Console | None) -> Claim:
    sel = select_best(a.curves.path, correct, console)
    last = a.curves.last_epoch
    before, after = a.epochs <= sel.epoch, a.epochs > sel.epoch
    d = a.directions[sharp]
    se = np.nan_to_num(a.sharpness_se[sharp])

    def side(mask: np.ndarray) -> tuple[np.ndarray, float]:  # [D] mean over those checkpoints, its example se
        if not mask.any():
            return np.zeros(0), 0.0
        return np.nanmean(d[mask], axis=0), float(np.sqrt((se[mask] ** 2).sum()) / mask.sum())

    (b, b_se), (f, f_se) = side(before), side(after)
    return cl.overfitting(_checkpoint(a, sel.epoch, correct, sharp, sel.measure),
                          _checkpoint(a, last, correct, sharp, sel.measure), b, f, selection=sel.how, sharpness=sharp,
                          sharpness_se=float(np.hypot(b_se, f_se)), seed=seed)


def _fly_vs_fixed(a: RunAnalysis, gap_cfg: GapConfig, device: str) -> Claim:
    """(4) on AT's last checkpoint: the cached on-the-fly landscape against the fixed-example ablation."""
    fixed_path = landscape_path(a.curves.path).with_name(a.curves.path.stem + ".fixed-adv.h5")
    pcfg = ProbeConfig(
        checkpoint=str(a.curves.path), epochs="last", alphas=gap_cfg.alphas, dirs=gap_cfg.dirs,
        steps=a.landscapes.config["attack"]["steps"], samples=gap_cfg.samples, seed=gap_cfg.seed,
        device=device, fixed_adv=True, out=str(fixed_path), png=str(fixed_path.with_suffix(".png")),
        progress=False,
    )
    fixed = run_probe(pcfg, console=Console(quiet=True)).results
    last = int(np.flatnonzero(a.epochs == a.curves.last_epoch)[0])
    return cl.on_the_fly_above_fixed(a.landscapes.values["adv_loss"][last], fixed.values["adv_loss"][0], a.landscapes.alphas)


def label_of(a: RunAnalysis) -> str:
    return TrainConfig.from_dict(a.curves.config).label


def seed_claims(analyses: list[RunAnalysis], gap_cfg: GapConfig, seed: int, device: str,
                console: Console | None = None) -> list[Claim]:
    """The paper's findings, judged on one seed's runs: (1), (2a), (3), (4) on AT and AT-AWP, and (5)
    on the Figure 1(b) methods present, each at the checkpoint it reports."""
    by = {label_of(a): a for a in analyses}
    at, awp = by.get("at"), by.get("at-awp")
    correct = Correctness(device)
    sharp = gap_cfg.sharpness
    out = []
    if at is not None and at.curves.last_epoch is not None:
        out.append(_overfitting(at, correct, sharp, seed, console))
    out.append(cl.within_epochs(gap_tests([by[m] for m in MAIN if m in by], sharp, seed).within))
    if at is not None and awp is not None:
        out.append(cl.awp_helps(_checkpoint(at, at.curves.last_epoch, correct, sharp),
                                _checkpoint(awp, awp.curves.last_epoch, correct, sharp), sharpness=sharp, seed=seed))
    if at is not None:
        out.append(_fly_vs_fixed(at, gap_cfg, device))
    zoo = {m: by[m] for m in PAPER_ZOO if m in by}
    if at is not None and zoo:
        out.append(cl.methods_flatter(_checkpoint(at, at.curves.final_epoch, correct, sharp),
                                      {m: _checkpoint(a, a.curves.final_epoch, correct, sharp) for m, a in zoo.items()},
                                      sharpness=sharp, seed=seed))
    return out


def tested(analyses: list[RunAnalysis]) -> list[RunAnalysis]:
    """The runs the across-run test uses: every method of the paper's Figure 1(b), AT and AT-AWP; not natural."""
    return [a for a in analyses if label_of(a) in MAIN + PAPER_ZOO or label_of(a).removesuffix("-awp") in PAPER_ZOO]


def study_claims(per_seed: dict[int, list[Claim]], tests: GapTests) -> list[Claim]:
    """Over all seeds: (2a) and (2b) from the tests over every run, the other claims with the seeds as units."""
    by_key: dict[str, list[Claim]] = {}
    for claims in per_seed.values():
        for c in claims:
            by_key.setdefault(c.key, []).append(c)
    out = []
    for key, group in by_key.items():
        if key == "2a":
            out += [cl.within_epochs(tests.within), cl.across_runs(tests.across)]
        else:
            out.append(cl.across_seeds(group) if len(group) > 1 else group[0])
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _pm(value: float, se: float, fmt: str = ".3f") -> str:
    return f"{value:{fmt}} ± {se:.3f}" if np.isfinite(se) else f"{value:{fmt}}"


def print_table(analyses: list[RunAnalysis], sharp: str, console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="digits: best test robust accuracy; test accuracy, gap and sharpness at "
                                             "the epoch each run reports (± se)")
    for col in ("method", "seed", "best epoch", "best test rob.", "reported epoch", "test rob.", "test nat.", "gap",
                sharp):
        table.add_column(col, justify="left" if col == "method" else "right")
    for a in analyses:
        c = a.curves
        b, l = c.best_epoch, c.final_epoch
        s, g = a.final(sharp)
        se = a.sharpness_se[sharp][a.epochs == l]
        acc = [(c.at(e, v), float(proportion_se(c.at(e, v), c.n_test))) for e, v in
               ((b, c.test_adv), (l, c.test_adv), (l, c.test_nat))]
        (bv, be), *rest = acc
        table.add_row(c.label, str(c.config.get("seed")), str(b), _pm(bv, be), str(l), *(_pm(v, e) for v, e in rest),
                      _pm(g, c.at(l, c.gap_se), "+.3f"), _pm(s, float(se[0]) if len(se) else np.nan))
    console.print(table)
    console.print("reported epoch: the last; for AT-ES the best on its validation split (early stopping). "
                  "best epoch: by test robust accuracy (the paper's choice, in the run file); claim (1) chooses it "
                  "again on half of the test set and measures it on the other half. ± se: over examples (binomial "
                  "for accuracies and the gap; PGD-on-the-fly noise for the sharpness, whose spread over directions "
                  "the claims add).", soft_wrap=True, highlight=False)


_COLOUR = {HOLDS: "green", FAILS: "red"}


def _status(s: str) -> str:
    c = _COLOUR.get(s, "yellow")
    return f"[{c}]{s}[/{c}]"


def print_claims(per_seed: dict[int, list[Claim]], study: list[Claim], console: Console) -> None:
    seeds = list(per_seed)
    table = Table(box=box.SIMPLE_HEAD, title="the paper's claims, on these runs")
    table.add_column("claim")
    for s in seeds:
        table.add_column(f"seed {s}")
    if len(seeds) > 1:
        table.add_column("over seeds")
    for claim in study:
        cells = []
        for s in seeds:
            match = [c for c in per_seed[s] if c.key == claim.key]
            cells.append(_status(match[0].status) if match else "–")
        row = [f"({claim.key}) {claim.text}", *cells] + ([_status(claim.status)] if len(seeds) > 1 else [])
        table.add_row(*row)
    console.print(table)
    for claim in study:
        console.print(f"[bold]({claim.key}) {claim.text}[/bold]: {_status(claim.status)}")
        if claim.deciding is not None:
            console.print(f"    decided by: {claim.deciding.what}", highlight=False)
        for p in claim.parts:
            console.print(f"    {'over seeds' if len(seeds) > 1 else f'seed {seeds[0]}'}: {p}", soft_wrap=True, highlight=False)
        if len(seeds) > 1:
            for s in seeds:
                for c in per_seed[s]:
                    if c.key == claim.key:
                        console.print(f"    seed {s}: {c.status}: {c.evidence}", soft_wrap=True, highlight=False)


@dataclass
class DemoOutcome:
    per_seed: dict[int, list[Claim]]
    study: list[Claim]
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def run_demo(cfg: DemoConfig, console: Console | None = None) -> DemoOutcome:
    console = console or (Console() if sys.stdout.isatty() else Console(width=130))
    t0 = time.perf_counter()
    fig_tag = check_outputs(cfg)
    torch.set_num_threads(1)  # the digits models are tiny: one thread is as fast and keeps the machine usable
    runs = _prepare_all(cfg, console)
    console.rule("weight loss landscapes (PGD on the fly)")
    labels = [m for _ in cfg.seeds for m in cfg.labels]
    # With workers the landscapes were computed (and shown) as each run was prepared; one process probes here.
    probe_console = console if cfg.progress and cfg.workers <= 1 else None
    analyses = [RunAnalysis(run_curves(r), probe_run(cfg.probe_config_of(m, r), r, probe_console)) for m, r in zip(labels, runs)]
    gap_cfg = cfg.gap_config(runs)
    sharp = gap_cfg.sharpness
    n = len(cfg.labels)
    by_seed = {s: analyses[i * n:(i + 1) * n] for i, s in enumerate(cfg.seeds)}
    console.rule("measuring the claims")
    per_seed = {s: seed_claims(a, gap_cfg, s, cfg.device, console if cfg.progress else None) for s, a in by_seed.items()}
    main = [a for a in analyses if label_of(a) in MAIN]
    tests = gap_tests(tested(analyses), sharp)
    study = study_claims(per_seed, tests)
    out = Path(cfg.figures_dir)
    first = [a for a in by_seed[cfg.seeds[0]] if label_of(a) in MAIN]
    with signed(fig_tag):
        files = [
            figures.learning_curves_png([a.curves for a in first], out / FIGURES[0]),
            figures.landscapes_png(first, out / FIGURES[1]),
            figures.scatter_png(main, sharp, gap_tests(main, sharp), out / FIGURES[2]),
            figures.methods_png(analyses, sharp, tests, out / FIGURES[3],
                                note="natural: drawn, not in the test (its robust accuracy is ~0 on both splits)"),
        ]
    files.append(write_report(gap_cfg, cfg.report, title="AWP weight-loss-landscape demo on digits", analyses=analyses,
                              tests=tests))
    console.rule("results")
    print_table(analyses, sharp, console)
    print_claims(per_seed, study, console)
    seconds = time.perf_counter() - t0
    console.print(f"figures: {', '.join(str(f) for f in files)}")
    console.print(f"{len(cfg.seeds)} seed(s), {len(runs)} runs: done in {seconds:.0f} s")
    return DemoOutcome(per_seed, study, files, seconds)
