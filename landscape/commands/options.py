"""Options every landscape command shares (`probe`, `plot2d`): the checkpoint and its data, the attack
run at every point, the directions, BatchNorm handling and the output file; and how they resolve into
the attack and the compute `Job` of the one pipeline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from typing import Any

import torch

from awp.attacks import AttackConfig, threat_model
from awp.config import check_nonnegative_int, check_positive_int, check_seed
from awp.data import class_stratified_subset
from awp.errors import UserError
from awp.kernels import KernelOptions, Kernels
from landscape.core import engine
from landscape.core.directions import normalization
from landscape.core.points import parse_points, points_per_pass
from landscape.pipeline.compute import Build, Job
from landscape.storage.results import Landscape

SPLITS = ("train", "test")  # Algorithm 1 uses the training data


@dataclass(frozen=True)
class LandscapeOptions(KernelOptions):
    """None means "from the checkpoint": run files know their training threat model."""

    checkpoint: str
    epochs: str = "last"  # run files: best | last | N | all | every:K
    arch: str | None = None  # a foreign .pt needs these two: a registry name, MODULE:CALLABLE or robustbench:NAME
    arch_kwargs: dict | None = None  # keyword arguments of the model's constructor
    dataset: str | None = None
    data_dir: str = "data"
    steps: int = 10  # PGD-10 (K1) as in the paper; 0 = natural loss landscape
    eps: float | None = None
    step_size: float | None = None  # PGD step eta1; default: the training one, or eps / 4
    norm: str | None = None
    split: str = "train"
    samples: int = 0  # 0 = every example of the split
    batch_size: int = 256
    seed: int = 0  # directions (seed, k), random starts and the subset
    normalize: str = "filter"  # Eq. 5 / Alg. 1 lines 3-7
    include_bn: bool = False  # 1-D parameters (biases, BN) get a direction too
    bn: str = "eval"  # eval | recalibrate
    bn_batches: int = 8  # training batches that re-estimate BN statistics per point
    device: str = "auto"
    chunk: int | None = None  # points per process between flushes (default: one direction for 1-D, 4 for 2-D)
    points_per_batch: int | str = "auto"  # weight points per pass (`landscape.core.points.points_per_pass`)
    workers: int = 1  # processes on this machine (torchrun's engine)
    out: str | None = None  # results .h5; figures go beside it
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.kernels  # a bad --precision: one line, the accepted ones
        check_nonnegative_int(self.steps, "--pgd")
        check_nonnegative_int(self.samples, "--samples")
        check_positive_int(self.batch_size, "--batch-size")
        check_positive_int(self.bn_batches, "--bn-batches")
        if self.chunk is not None:
            check_positive_int(self.chunk, "--chunk")
        parse_points(self.points_per_batch)
        check_seed(self.seed, "--seed")
        normalization(self.normalize)
        engine.bn_mode(self.bn)
        if self.norm is not None:
            threat_model(self.norm)
        if self.split not in SPLITS:
            raise UserError(f"unknown --split {self.split!r}; accepted: {', '.join(SPLITS)}")
        for name, v in (("--eps", self.eps), ("--pgd-step", self.step_size)):
            if v is not None and not v >= 0:
                raise UserError(f"{name} must be >= 0, got {v}")
        if self.out is not None and Path(self.out).suffix.lower() not in (".h5", ".hdf5"):
            raise UserError(f"-o {self.out!r} names the results file; give it a .h5 suffix (figures go beside it)")


def threat_radius(norm: str | None, eps: float | None, trained: AttackConfig | None, source: str,
                  give: str) -> tuple[str, float, bool]:
    """(norm, eps, taken from the file): the given --norm/--eps, defaulting to the training threat model
    the file records; `give` names the flags to give when it records none."""
    norm = norm or (trained.norm if trained else "linf")
    if eps is not None:
        return norm, eps, False
    if trained is None:
        raise UserError(f"{source!r} does not record its training threat model; give {give}")
    if norm != trained.norm:
        raise UserError(f"--norm {norm} differs from the training threat model ({trained.norm}); give --eps too")
    return norm, trained.eps, True


def resolve_attack(cfg: LandscapeOptions, trained: AttackConfig | None, source: str) -> AttackConfig:
    """--eps/--pgd-step/--norm, defaulting to the training threat model the file records (its L2 random
    start included; the reference's for a file that records none)."""
    if cfg.steps == 0 and cfg.eps is None and trained is None:  # the natural landscape needs no radius
        return AttackConfig(norm=cfg.norm or "linf", eps=0.0, step_size=0.0, steps=0)
    norm, eps, from_file = threat_radius(cfg.norm, cfg.eps, trained, source, "--eps (and --norm, --pgd-step)")
    if cfg.step_size is not None:
        step = cfg.step_size
    else:  # the training step, or the paper's 2/255 for 8/255
        step = trained.step_size if from_file and trained is not None else eps / 4
    l2_start = trained.l2_start if trained is not None else AttackConfig.l2_start
    return AttackConfig(norm=norm, eps=eps, step_size=step, steps=cfg.steps, l2_start=l2_start)


def recorded_options(cfg: LandscapeOptions, attack: AttackConfig) -> dict[str, Any]:
    """The shared options that decide the numbers, for the results file's config. The precision is one
    (absent at fp32, so files written before it existed resume); channels_last and compile only change
    the speed and go to the runtime record (`job_for`)."""
    return {"attack": asdict(attack), "split": cfg.split, "samples": cfg.samples, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "normalize": cfg.normalize, "include_bn": cfg.include_bn, "bn": cfg.bn,
            "bn_batches": cfg.bn_batches if cfg.bn == "recalibrate" else 0, **cfg.kernels.decides()}


def prepared(build: Build, kernels: Kernels) -> Build:
    """`build` whose model comes back `kernels.prepare`d (channels_last weights, compiled forward)."""
    return lambda device: kernels.prepare(build(device))


def probe_data(cfg: LandscapeOptions, source: Any, attack: AttackConfig, device: torch.device):
    """Fixed batches with their random starts, and the clean inputs BN recalibration uses."""
    train_ds, test_ds = source.datasets()
    ds = class_stratified_subset({"train": train_ds, "test": test_ds}[cfg.split], cfg.samples, cfg.seed)
    batches = engine.fixed_batches(ds, cfg.batch_size, attack, seed=cfg.seed, device=device)
    k = cfg.kernels
    batches = [engine.ProbeBatch(k.inputs(b.x), b.y, k.inputs(b.delta0)) for b in batches]  # --channels-last
    bn_inputs: list[torch.Tensor] = []
    if cfg.bn == "recalibrate":
        calib = class_stratified_subset(train_ds, cfg.bn_batches * cfg.batch_size, cfg.seed + 1)
        bn_inputs = engine.clean_inputs(calib, cfg.batch_size, device)
    return batches, bn_inputs, len(ds)


def job_for(cfg: LandscapeOptions, source: Any, attack: AttackConfig, results: Landscape, device: torch.device,
            chunk: int, fixed_adv: bool = False, targets: dict | None = None) -> Job:
    """The compute job of a landscape command: its checkpoints' models (prepared per `cfg.kernels`),
    data and attack."""
    kernels = cfg.kernels
    kernels.check(device)  # a precision torch cannot run here: one line, before any compute
    batches, bn_inputs, n = probe_data(cfg, source, attack, device)
    results.runtime["examples"] = n
    results.runtime["kernels"] = kernels.record()  # where and how it ran; a resume may change the speed options
    p = points_per_pass(parse_points(cfg.points_per_batch), device, cfg.batch_size)
    results.runtime["points_per_batch"] = p  # float rounding only: a resume may use another P
    return Job([prepared(c.build, kernels) for c in source.checkpoints], batches, attack, cfg.bn, bn_inputs,
               fixed_adv, targets or {}, cfg.chunk or chunk, points=p, kernels=kernels)
