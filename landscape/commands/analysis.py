"""Robust generalization gap vs weight-landscape sharpness (Section 3, Figure 1), per run and across runs.

A run file gives the gap per epoch (train robust - test robust accuracy, both with the same attack
in eval mode); its checkpoints' 1-D on-the-fly landscapes come from the `probe` engine and are cached
beside the run (`RUN.landscape.h5`), so asking again computes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from awp.config import check_positive_int, check_seed
from awp.errors import UserError
from awp.safeio import check_dir, check_output, provenance, same_file
from awp.methods import method_label
from awp.store import open_run
from landscape.core.axes import parse_centred_range
from landscape.commands.probe import ProbeConfig, check_outputs, run_probe
from landscape.core.measures import parse_measures
from landscape.core.sharpness import SHARPNESS
from landscape.storage.measures import MeasureResults
from landscape.storage.results import Landscape, StaleResults
from landscape.core.stats import ALPHA, MIN_UNITS, NOT_SIGNIFICANT, CorrelationTest, across_runs, holm, within_runs



@dataclass
class RunCurves:
    """One training run's per-epoch robustness and its best/last epochs."""

    path: Path
    label: str
    config: dict
    epochs: np.ndarray
    train_adv: np.ndarray  # fixed training subset, eval mode, evaluation attack
    test_adv: np.ndarray
    test_nat: np.ndarray
    train_nat: np.ndarray
    best_epoch: int | None
    last_epoch: int | None
    n_train: int = 0  # examples behind train_* and test_* (0: unknown)
    n_test: int = 0
    reported_epoch: int | None = None  # the run's model: AT-ES's early-stopped epoch, else the last (None: last)

    @property
    def final_epoch(self) -> int | None:
        """The epoch that stands for the run across runs (Figure 1b): the one it reports."""
        return self.reported_epoch if self.reported_epoch is not None else self.last_epoch

    @property
    def gap(self) -> np.ndarray:
        """Robust generalization gap = train robust - test robust accuracy (Section 3)."""
        return self.train_adv - self.test_adv

    @property
    def gap_se(self) -> np.ndarray:
        """Standard error of the gap over examples: two independent binomial proportions,
        sqrt(p_tr (1 - p_tr) / n_tr + p_te (1 - p_te) / n_te); NaN when the counts are unknown."""
        return np.sqrt(proportion_se(self.train_adv, self.n_train) ** 2 + proportion_se(self.test_adv, self.n_test) ** 2)

    def at(self, epoch: int, values: np.ndarray) -> float:
        idx = np.flatnonzero(self.epochs == epoch)
        return float(values[idx[0]]) if len(idx) else float("nan")


def proportion_se(p: np.ndarray | float, n: int) -> np.ndarray:
    """Standard error of an accuracy p measured on n examples: sqrt(p (1 - p) / n); NaN for n = 0."""
    p = np.asarray(p, dtype=float)
    return np.sqrt(p * (1 - p) / n) if n > 0 else np.full(p.shape, np.nan)


def run_label(config: dict) -> str:
    """'at', 'at-awp (gamma=0.01)' ...: what distinguishes runs in legends."""
    method = method_label(config.get("method", "?"), config.get("use_awp", False))
    gamma = config.get("awp", {}).get("gamma")
    return f"{method} (γ={gamma:g})" if "awp" in method and gamma is not None else method


def run_curves(path: str | Path, label: str | None = None) -> RunCurves:
    """A run's per-epoch robustness at the epochs that measured it (all, or every --eval-every-th)."""
    reader = open_run(path)
    m = reader.metrics()
    if len(m.get("epoch", [])) == 0:
        raise UserError(f"{str(path)!r} has no finished epoch yet")
    data = reader.data()
    keep = np.isfinite(m["test_adv_acc"])  # the epochs that measured train/test robustness (--eval-every)
    m = {k: v[keep] for k, v in m.items() if len(v) == len(keep)}
    return RunCurves(
        Path(path), label or run_label(reader.config), reader.config, m["epoch"].astype(int), m["train_adv_acc"],
        m["test_adv_acc"], m["test_nat_acc"], m["train_nat_acc"], reader.best_epoch, reader.last_epoch,
        len(data.train_eval), len(data.test), reader.reported_epoch,
    )


def landscape_path(run: str | Path) -> Path:
    """Where the landscapes of a run's checkpoints are cached: beside the run."""
    run = Path(run)
    return run.with_name(run.stem + ".landscape.h5")


def measures_path(run: str | Path) -> Path:
    """Where the sharpness measures of a run's checkpoints are cached: beside the run."""
    run = Path(run)
    return run.with_name(run.stem + ".measures.h5")


@dataclass(frozen=True)
class GapConfig:
    """`landscape gap`: which checkpoints to probe and how (a small probe: it runs for every K-th epoch)."""

    runs: tuple[str, ...]
    every: int = 10
    epochs: str | None = None  # an epoch spec probed instead of every:K (e.g. "reported": one point per run)
    sharpness: str = "rise"
    measures: str | None = None  # more measures (`landscape.core.measures`), each tested against the gap and ranked
    dirs: int = 3
    alphas: str = "-1:1:11"
    steps: int | None = None  # PGD steps; None: the run's training attack
    samples: int = 200  # a fixed, class-stratified subset of the training set
    split: str = "train"
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    out_dir: str = "figures"
    prefix: str = "gap"
    progress: bool = True
    overwrite: bool = False  # replace existing figures / pages that are not this command's own

    def __post_init__(self) -> None:
        if not self.runs:
            raise UserError("give at least one run file")
        if self.every < 1:
            raise UserError(f"--every must be >= 1, got {self.every}")
        SHARPNESS.lookup(self.sharpness)  # the x axis: any measure of the registry
        if self.measures is not None:
            parse_measures(self.measures)
        check_seed(self.seed, "--seed")
        check_positive_int(self.dirs, "--dirs")
        parse_centred_range(self.alphas, "--alphas")  # refused before any run is opened or probed

    @property
    def extra_measures(self) -> tuple[str, ...]:
        """The measures computed by `landscape sharpness` (those the probe gives, rise and curvature, are
        read from the probe instead)."""
        return tuple(n for n in parse_measures(self.measures) if n not in SHARPNESS) if self.measures else ()

    @property
    def tested(self) -> tuple[str, ...]:
        """Every measure tested against the gap: the x axis first, then the rest asked for."""
        asked = parse_measures(self.measures) if self.measures else ()
        return tuple(dict.fromkeys((self.sharpness, *asked)))

    @property
    def epoch_spec(self) -> str:
        """The checkpoints probed in every run: `epochs`, or every K-th saved one plus best, last and reported."""
        return self.epochs if self.epochs is not None else f"every:{self.every}"


def probe_config(cfg: GapConfig, run: str | Path) -> ProbeConfig:
    """The small probe of every K-th saved checkpoint plus best and last, cached beside the run."""
    reader = open_run(run)
    steps = cfg.steps if cfg.steps is not None else reader.attack_config().steps
    return ProbeConfig(
        checkpoint=str(run), epochs=cfg.epoch_spec, alphas=cfg.alphas, dirs=cfg.dirs, steps=steps,
        split=cfg.split, samples=cfg.samples, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
        out=str(landscape_path(run)), png=str(landscape_path(run).with_suffix(".png")), progress=cfg.progress,
    )


def sharpness_config(cfg: GapConfig, run: str | Path):
    """The measures of the same checkpoints, examples, attack and seed as the probe, cached beside the run."""
    from landscape.commands.sharpness import SharpnessConfig

    p = probe_config(cfg, run)
    return SharpnessConfig(checkpoint=str(run), epochs=p.epochs, steps=p.steps, split=p.split, samples=p.samples,
                           batch_size=p.batch_size, seed=p.seed, device=p.device, measures=",".join(cfg.extra_measures),
                           out=str(measures_path(run)), png=str(measures_path(run).with_suffix(".png")),
                           progress=cfg.progress)


def check_caches(cfg: GapConfig) -> list[Path]:
    """Before any compute: at least one test can be made, every run opens, and its landscape cache (and
    PNG) may be written or resumed; returns the cache files (inputs of whatever is drawn from them)."""
    caches = []
    changes = sum(max(len(open_run(run).resolve_epochs(cfg.epoch_spec)) - 1, 0) for run in cfg.runs)
    if changes < MIN_UNITS and len(cfg.runs) < MIN_UNITS:
        raise UserError(f"{changes} epoch-to-epoch changes in {len(cfg.runs)} run(s) allow no test of gap vs sharpness: "
                        f"it needs at least {MIN_UNITS} changes within runs (a smaller --every, or train with "
                        f"--save-every) or at least {MIN_UNITS} runs")
    for run in cfg.runs:
        pcfg = probe_config(cfg, run)
        for other in cfg.runs:
            if same_file(pcfg.out, other):
                raise UserError(f"run {str(other)!r} sits where the landscape cache of {str(run)!r} goes; rename it")
        caches.append(check_outputs(pcfg)[0])
        if cfg.extra_measures:
            from landscape.commands.sharpness import check_outputs as check_measures

            caches.append(check_measures(sharpness_config(cfg, run))[0])
    return caches


def check_figures(cfg: GapConfig, names: list[str], command: str, flag: str = "--out-dir") -> str:
    """`cfg.out_dir` (given as `flag`) can hold the figures `names` of `command`; returns their provenance tag."""
    out = check_dir(cfg.out_dir, flag)
    tag = provenance(command, cfg.runs, out)
    for name in names:
        check_output(out / name, flag, inputs=[*cfg.runs, *map(landscape_path, cfg.runs)],
                     overwrite=cfg.overwrite, writes="figure", tag=tag)
    return tag


def probe_run(cfg: GapConfig, run: str | Path, console: Console | None = None) -> Landscape:
    """Landscapes of every K-th saved checkpoint plus best and last, with the `probe` engine, cached."""
    pcfg = probe_config(cfg, run)
    console = console or Console(quiet=True)
    try:
        return run_probe(pcfg, console=console).results
    except StaleResults:  # a cache: other settings or retrained weights mean computing afresh
        console.print(f"{pcfg.out}: cached landscapes were made with other settings; recomputing")
        return run_probe(replace(pcfg, overwrite=True), console=console).results


def measure_run(cfg: GapConfig, run: str | Path, console: Console | None = None) -> MeasureResults | None:
    """The extra measures of the probed checkpoints (`landscape sharpness`), cached; None when none asked."""
    if not cfg.extra_measures:
        return None
    from landscape.commands.sharpness import run_sharpness

    scfg = sharpness_config(cfg, run)
    console = console or Console(quiet=True)
    try:
        return run_sharpness(scfg, console=Console(quiet=True))
    except StaleResults:
        console.print(f"{scfg.out}: cached measures were made with other settings; recomputing")
        return run_sharpness(replace(scfg, overwrite=True), console=Console(quiet=True))


@dataclass
class RunAnalysis:
    """A run's curves, the landscapes of its probed checkpoints and any further measures, paired by epoch."""

    curves: RunCurves
    landscapes: Landscape
    measures: MeasureResults | None = None
    epochs: np.ndarray = field(init=False)  # probed epochs [C]
    sharpness: dict[str, np.ndarray] = field(init=False)  # name -> [C], mean over directions
    directions: dict[str, np.ndarray] = field(init=False)  # name -> [C, D], NaN for an incomplete direction
    sharpness_se: dict[str, np.ndarray] = field(init=False)  # name -> [C], over examples (NaN: not known)
    gap: np.ndarray = field(init=False)  # gap at the probed epochs [C]
    gap_se: np.ndarray = field(init=False)  # its standard error over examples [C]

    def __post_init__(self) -> None:
        res = self.landscapes
        summaries = res.sharpness()
        self.epochs = np.array([c.epoch for c in res.checkpoints], dtype=int)
        self.sharpness = {name: np.array([s.mean[name] for s in summaries]) for name in SHARPNESS}
        self.sharpness_se = {name: np.array([s.se[name] for s in summaries]) for name in SHARPNESS}
        self.directions = res.per_direction()[0]  # name -> [C, D], NaN for an incomplete direction
        if self.measures is not None:  # aligned by epoch; the first scope (all parameters, or the globs)
            at = {int(e): i for i, e in enumerate(self.measures.epochs) if np.isfinite(e)}
            rows = [at.get(int(e)) for e in self.epochs]
            for name in self.measures.measures:
                v, se = self.measures.get(name)
                self.sharpness[name] = np.array([v[i] if i is not None else np.nan for i in rows])
                self.sharpness_se[name] = np.array([se[i] if i is not None else np.nan for i in rows])
        self.gap = np.array([self.curves.at(int(e), self.curves.gap) for e in self.epochs])
        self.gap_se = np.array([self.curves.at(int(e), self.curves.gap_se) for e in self.epochs])

    def final(self, sharpness: str) -> tuple[float, float]:
        """(sharpness, gap) at the epoch the run reports (the last; AT-ES's early-stopped one): the run's
        point across runs (Figure 1b)."""
        at = np.flatnonzero(self.epochs == self.curves.final_epoch)
        return (float(self.sharpness[sharpness][at[0]]), float(self.gap[at[0]])) if len(at) else (np.nan, np.nan)


def analyse(cfg: GapConfig, console: Console | None = None) -> list[RunAnalysis]:
    """Curves and (cached) landscapes for every run of `cfg`."""
    return [RunAnalysis(run_curves(r), probe_run(cfg, r, console), measure_run(cfg, r, console)) for r in cfg.runs]


@dataclass(frozen=True)
class GapTests:
    """The two valid tests of gap vs sharpness: over epochs within runs, and over runs."""

    within: CorrelationTest
    across: CorrelationTest

    def __iter__(self):
        return iter((self.within, self.across))


def gap_tests(analyses: list[RunAnalysis], sharpness: str, seed: int = 0) -> GapTests:
    """Spearman of the epoch-to-epoch changes within runs, and of the final points across runs
    (`landscape.core.stats.within_runs` / `across_runs`); too few units give a test without an estimate."""
    within = within_runs([(a.sharpness[sharpness], a.gap) for a in analyses], seed=seed)
    final = np.array([a.final(sharpness) for a in analyses]).reshape(-1, 2)
    return GapTests(within, across_runs(final[:, 0], final[:, 1], seed=seed))


def setting(a: RunAnalysis) -> str:
    """The setting a run belongs to, for per-setting associations: its method and dataset."""
    cfg = a.curves.config
    return f"{method_label(cfg.get('method', '?'), cfg.get('use_awp', False))} on {cfg.get('dataset', '?')}"


@dataclass(frozen=True)
class MeasureRanking:
    """Every tested measure's two tests against the gap over a set of runs, with Holm-adjusted p-values
    over the measures (the family: the measures tested together), ranked by the within-run evidence."""

    setting: str
    measures: tuple[str, ...]
    tests: tuple[GapTests, ...]
    within_holm: tuple[float | None, ...]
    across_holm: tuple[float | None, ...]

    def verdict(self, i: int, scope: str) -> str | None:
        """Measure i's status in one scope ("within" or "across") after Holm: 'holds' / 'fails' only where
        the adjusted p < 0.05; None where there is no test."""
        test = getattr(self.tests[i], scope)
        adj = (self.within_holm if scope == "within" else self.across_holm)[i]
        if adj is None:
            return None
        return test.status if adj < ALPHA else NOT_SIGNIFICANT

    def order(self) -> list[int]:
        """Measures by the within-run adjusted p (untestable last), then by |rho| within runs, descending."""
        def key(i: int):
            p = self.within_holm[i]
            est = self.tests[i].within.estimate
            return (p is None, p if p is not None else 1.0, -(abs(est.value) if est is not None else 0.0))
        return sorted(range(len(self.measures)), key=key)


def rank_measures(analyses: list[RunAnalysis], measures: tuple[str, ...], seed: int = 0) -> list[MeasureRanking]:
    """`gap_tests` for every measure, over all runs and, when the runs span several settings (method,
    dataset), over the runs of each setting; Holm's adjustment within each ranking."""
    groups: dict[str, list[RunAnalysis]] = {"all runs": analyses}
    by_setting: dict[str, list[RunAnalysis]] = {}
    for a in analyses:
        by_setting.setdefault(setting(a), []).append(a)
    if len(by_setting) > 1:
        groups.update(by_setting)
    out = []
    for label, runs in groups.items():
        tests = tuple(gap_tests(runs, m, seed) for m in measures)
        out.append(MeasureRanking(label, measures, tests, tuple(holm([t.within.p for t in tests])),
                                  tuple(holm([t.across.p for t in tests]))))
    return out
