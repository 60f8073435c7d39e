"""`landscape eval`: robustness of checkpoints under the paper's attacks (natural, FGSM, PGD-K, CW-inf,
AutoAttack), per example and resumable, as a terminal table, a RobustBench-style JSON, and an
`evaluations` record in the run file (shown by `landscape info` and `landscape report`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from awp.attacks import AttackConfig
from awp.config import check_nonnegative_int, check_positive_int, check_seed, resolve_device
from awp.data import class_stratified_subset, dataset_labels
from awp.errors import Interrupted, UserError
from awp.kernels import KernelOptions
from awp.robustness import Evaluation, Threat, parse_attack, parse_attacks, run_evaluation
from awp.robustness.attacks import DEFAULT_ATTACKS
from awp.robustness import autoattack
from awp.robustness.record import FORMAT, FORMAT_VERSION, evaluation_record, pct as _pct
from awp.safeio import atomic_write, check_output, exclusive
from awp.stopping import graceful_stop
from landscape.pipeline.progress import PointBar
from landscape.commands.options import threat_radius
from landscape.storage.examples import open_or_resume
from landscape.storage.sources import Source, open_model_source, open_source



@dataclass(frozen=True)
class EvalConfig(KernelOptions):
    """One `landscape eval`. None means "from the checkpoint" (run files know their threat model)."""

    checkpoint: str | None  # None: --model builds the model with its own weights
    attacks: str = DEFAULT_ATTACKS
    epochs: str = "last"
    arch: str | None = None
    arch_kwargs: dict | None = None
    dataset: str | None = None
    data_dir: str = "data"
    eps: float | None = None
    norm: str | None = None
    step_size: float | None = None  # PGD / CW step; default eps/4 (the paper's 2/255 at 8/255)
    restarts: int = 1
    samples: int = 0  # 0: the whole test set
    batch_size: int = 256
    seed: int = 0
    aa_version: str = "standard"
    device: str = "auto"
    out: str | None = None  # the JSON; per-example results go beside it (.examples.h5)
    overwrite: bool = False
    progress: bool = True
    def __post_init__(self) -> None:
        self.kernels  # a bad --precision: one line naming the accepted ones
        parse_attacks(self.attacks)
        check_positive_int(self.restarts, "--restarts")
        check_nonnegative_int(self.samples, "--samples")
        check_positive_int(self.batch_size, "--batch-size")
        check_seed(self.seed, "--seed")
        autoattack.AA_VERSIONS.lookup(self.aa_version)
        if self.out is not None and Path(self.out).suffix.lower() != ".json":
            raise UserError(f"-o {self.out!r} names the JSON results; give it a .json suffix")
        if self.eps is not None and not self.eps >= 0:
            raise UserError(f"--eps must be >= 0, got {self.eps}")


def resolve_threat(cfg: EvalConfig, trained: AttackConfig | None, source: str) -> Threat:
    """--eps/--norm/--step-size, defaulting to the training threat model the file records; the PGD step
    defaults to eps/4 (the paper's test attacks: 2/255 at 8/255), not the training step."""
    norm, eps, _ = threat_radius(cfg.norm, cfg.eps, trained, source, "--eps (and --norm)")
    step = cfg.step_size if cfg.step_size is not None else eps / 4
    l2_start = trained.l2_start if trained is not None else AttackConfig.l2_start
    AttackConfig(norm=norm, eps=eps, step_size=step, steps=1, l2_start=l2_start)  # the one range check of eps
    return Threat(norm=norm, eps=eps, step_size=step, restarts=cfg.restarts, l2_start=l2_start,
                  aa_version=cfg.aa_version)


def default_out(cfg: EvalConfig, source: Source) -> Path:
    """Beside the checkpoint: runs/x.h5 -> runs/x-eval.json; a model without a file: eval-NAME.json here."""
    if source.kind == "model":
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(cfg.arch))
        return Path(f"eval-{name}.json")
    return source.path.with_name(f"{source.path.stem}-eval.json")


def examples_path(out: Path) -> Path:
    """Where the per-example results of JSON `out` live: results.json -> results.examples.h5."""
    return out.with_suffix(".examples.h5")


def _check_json_output(out: Path, inputs: list[str], overwrite: bool) -> None:
    """An existing JSON of ours is rewritten from the per-example file; anything else needs --overwrite."""
    if out.exists() and not overwrite:
        try:
            ours = json.loads(out.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            check_output(out, "-o", inputs=inputs, overwrite=True, writes="evaluation JSON")
            return
    check_output(out, "-o", inputs=inputs, overwrite=overwrite, writes="evaluation JSON")


def _attacks(cfg: EvalConfig):
    attacks = parse_attacks(cfg.attacks)
    if all(a.family != "natural" for a in attacks):  # the clean accuracy every record reports
        attacks.insert(0, parse_attack("natural"))
    if any(a.family == "autoattack" for a in attacks):
        autoattack.require()
    return attacks


def run_eval(cfg: EvalConfig, console: Console | None = None) -> dict[str, Any]:
    """Evaluate every checkpoint cfg selects; returns the JSON document written to `-o`."""
    console = console or Console(stderr=True, highlight=False)
    attacks = _attacks(cfg)
    device = resolve_device(cfg.device)
    kernels = cfg.kernels
    kernels.check(device)
    if cfg.checkpoint is None:
        source = open_model_source(cfg.arch, cfg.dataset, cfg.data_dir, cfg.arch_kwargs)
    else:
        source = open_source(cfg.checkpoint, cfg.epochs, cfg.arch, cfg.dataset, cfg.data_dir, cfg.arch_kwargs)
    threat = resolve_threat(cfg, source.train_attack, str(source.path))
    _, test = source.datasets()
    if cfg.samples > len(test):
        raise UserError(f"--samples {cfg.samples} is larger than the test set of {source.dataset} "
                        f"({len(test)} examples); give at most {len(test)}, or 0 for all")
    ds = class_stratified_subset(test, cfg.samples, cfg.seed)
    labels = np.asarray(dataset_labels(ds), dtype=np.int64)
    out = Path(cfg.out) if cfg.out else default_out(cfg, source)
    per_example = examples_path(out)
    inputs = [str(source.path)] if source.kind != "model" else []
    _check_json_output(out, inputs, cfg.overwrite)
    check_output(per_example, "-o", inputs=inputs, overwrite=cfg.overwrite, writes="per-example results",
                 resumes="awp-landscape-eval-examples")
    # The precision decides the numbers (absent at fp32: evaluations made before it existed resume and keep
    # their run-file records); channels_last and compile only the speed, so they are in "kernels" alone.
    options = {"dataset": source.dataset, "split": "test", "samples": cfg.samples, "n": len(ds), "seed": cfg.seed,
               "batch_size": cfg.batch_size, **kernels.decides()}
    config = {**options, "threat": asdict(threat)}
    records: list[dict[str, Any]] = []
    with exclusive(per_example), graceful_stop():
        results = open_or_resume(per_example, config, cfg.overwrite)
        for ckpt in source.checkpoints:
            entry = results.entry(ckpt.ident, labels)
            for a in attacks:
                entry.settings[a.name] = a.settings(threat)
            evaluation = Evaluation(attacks, threat, entry.tallies)
            model = kernels.prepare(ckpt.build(device))
            console.print(f"[bold]{ckpt.ident.label}[/] of {source.path.name}: {len(ds)} test examples, "
                          f"{threat.norm} eps {threat.eps:.4g}")

            def bar(name: str, total: int, done: int, label: str = ckpt.ident.label) -> PointBar:
                return PointBar(total, cfg.progress, f"{label} {name}", unit="examples", completed=done)

            finished = run_evaluation(model, ds, evaluation, batch_size=cfg.batch_size, seed=cfg.seed, device=device,
                                      save=lambda: results.save(per_example), bar=bar, kernels=kernels)
            if not finished:
                raise Interrupted(f"{str(per_example)!r} keeps the per-example results of every finished batch")
            checkpoint = {"path": ckpt.ident.source, "epoch": ckpt.ident.epoch, "sha256": ckpt.ident.sha256,
                          "label": ckpt.ident.label}
            clean = entry.tallies[next(a.name for a in attacks if a.family == "natural")].robust
            record = evaluation_record(evaluation, dataset=source.dataset, architecture=source.arch,
                                       checkpoint=checkpoint, options=options, clean=clean)
            record["kernels"] = kernels.record()
            records.append(record)
            print_table(record, console)
            if source.kind == "run":
                _record_in_run(source.path, record, console)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "evaluations": records,
                "per_example_results": str(per_example)}
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n"))
    console.print(f"results: {out} (per example: {per_example})")
    return document


def _record_in_run(path: Path, record: dict[str, Any], console: Console) -> None:
    """Add the record to the run file; a run still training keeps its file to itself (said, not fatal)."""
    from awp.store import add_evaluation

    try:
        add_evaluation(path, record)
    except UserError as e:
        console.print(f"[yellow]warning:[/] the run file was not updated ({e}); the JSON holds the evaluation")


def print_table(record: dict[str, Any], console: Console) -> None:
    """Every attack's robust accuracy with its 95% interval and seconds, and the worst case over them."""
    table = Table(title=f"{record['dataset']} {record['threat_model']} eps {record['eps']}: "
                        f"{record['checkpoint']['label']} ({record['n_examples']} examples)")
    for col, justify in (("attack", "left"), ("robust acc %", "right"), ("95% CI", "right"), ("seconds", "right"),
                         ("settings", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, a in record["attacks"].items():
        s = a["settings"]
        settings = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()
                             if k not in ("family", "norm", "eps", "random_start"))
        table.add_row(name, *_pct(a), f"{a['seconds']:.1f}", settings)
    table.add_row("[bold]worst case[/]", *_pct(record["robust"]), "", "per example, over every attack above")
    console.print(table)
    console.print("95% CI: Wilson interval over test examples (sampling of the test set, not of training runs)")

