"""Options every landscape command shares (`probe`, `plot2d`): the checkpoint and its data, the attack
run at every point, the directions, BatchNorm handling and the output file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from awp.attacks import threat_model
from awp.config import check_nonnegative_int, check_positive_int, check_seed
from awp.errors import UserError
from landscape.core import engine
from landscape.core.directions import normalization

SPLITS = ("train", "test")  # Algorithm 1 uses the training data


@dataclass(frozen=True)
class LandscapeOptions:
    """None means "from the checkpoint": run files know their training threat model."""

    checkpoint: str
    epochs: str = "last"  # run files: best | last | N | all | every:K
    arch: str | None = None  # a foreign .pt needs these two
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
    out: str | None = None  # results .h5; figures go beside it
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_nonnegative_int(self.steps, "--pgd")
        check_nonnegative_int(self.samples, "--samples")
        check_positive_int(self.batch_size, "--batch-size")
        check_positive_int(self.bn_batches, "--bn-batches")
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
