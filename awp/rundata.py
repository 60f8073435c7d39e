"""The datasets of one training run, rebuilt deterministically from its config (trainer and readers agree).

The training set may be a fixed class-stratified subset (`train_size`), part of which may be held out
for model selection (`val_split`); the train-eval set is a fixed subset of what is trained on, without
augmentation, so that the robust generalization gap compares like with like.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from awp.data import DatasetInfo, batches, dataset_labels, load_dataset, stratified_split
from awp.errors import UserError

# Subsets are fixed across runs and seeds, so AT and AT-AWP runs see the same examples.
SUBSET_SEED = 0


@dataclass
class RunData:
    """`train`: what SGD sees (augmented where the dataset is); `train_plain`: the same examples
    without augmentation; `train_eval`: a fixed subset of `train_plain`; `val` is None without a split."""

    info: DatasetInfo
    train: Dataset
    train_plain: Dataset
    train_eval: Dataset
    val: Dataset | None
    test: Dataset
    # Training-split examples the run uses for neither training nor validation (RST's default unlabelled set).
    rest: Dataset | None = None
    # Pseudo-labelled extra examples (RST, Eq. 4): mixed into every training batch at `unlabeled_fraction`.
    unlabeled: Dataset | None = None
    unlabeled_fraction: float = 0.0

    def labeled_per_batch(self, batch_size: int) -> int:
        """Labelled examples in a training batch of `batch_size` (the rest are pseudo-labelled)."""
        if self.unlabeled is None:
            return batch_size
        return max(1, batch_size - int(round(self.unlabeled_fraction * batch_size)))

    def steps(self, batch_size: int) -> int:
        """Training batches per epoch: one pass over the labelled set."""
        return math.ceil(len(self.train) / self.labeled_per_batch(batch_size))


def training_batches(
    data: RunData, batch_size: int, *, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Iterator[tuple[Tensor, Tensor]]:
    """An epoch's shuffled training batches of `batch_size`: labelled examples only, or (RST) each batch
    `labeled_per_batch` labelled examples followed by pseudo-labelled ones drawn without replacement
    from a shuffle of the unlabelled set (reshuffled when used up), as Carmon et al.'s sampler."""
    n_lab = data.labeled_per_batch(batch_size)
    labeled = batches(data.train, n_lab, shuffle=True, generator=generator, device=device)
    if data.unlabeled is None:
        yield from labeled
        return
    n_unl = batch_size - n_lab
    xu_all, yu_all = data.unlabeled.tensors
    order, pos = torch.randperm(len(xu_all), generator=generator), 0
    for x, y in labeled:
        take_n = n_unl if len(x) == n_lab else max(0, int(round(len(x) * n_unl / n_lab)))  # the last, short batch keeps the ratio
        idx = []
        while len(idx) < take_n:
            if pos == len(order):
                order, pos = torch.randperm(len(xu_all), generator=generator), 0
            k = min(take_n - len(idx), len(order) - pos)
            idx.extend(order[pos : pos + k].tolist())
            pos += k
        sel = torch.tensor(idx, dtype=torch.long)
        yield torch.cat([x, xu_all[sel].to(device)]), torch.cat([y, yu_all[sel].to(device)])


def take(ds: Dataset, idx: np.ndarray) -> Dataset:
    """Examples `idx` of `ds`: sliced tensors for in-memory data, a `Subset` otherwise."""
    if isinstance(ds, TensorDataset):
        sel = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return TensorDataset(*(t[sel] for t in ds.tensors))
    return Subset(ds, np.asarray(idx).tolist())


def _subset_indices(n_total: int, labels: np.ndarray, n: int) -> np.ndarray:
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    idx, _ = stratified_split(labels, n, SUBSET_SEED)
    return idx


def run_data(
    dataset: str,
    data_dir: str | Path = "data",
    *,
    train_size: int = 0,
    train_eval_size: int = 0,
    val_split: float = 0.0,
    test_size: int = 0,
) -> RunData:
    """Load `dataset` and cut it as a run does. Sizes of 0 mean "all"; `val_split` is a fraction."""
    splits = load_dataset(dataset, data_dir)
    labels = dataset_labels(splits.train_eval)
    keep = _subset_indices(len(labels), labels, train_size)  # the fixed training subset
    val_idx = None
    if val_split > 0:
        n_val = int(round(val_split * len(keep)))
        if not 0 < n_val < len(keep):
            raise UserError(f"val split {val_split} of {len(keep)} training examples leaves no validation or no training data")
        val_pos, fit_pos = stratified_split(labels[keep], n_val, SUBSET_SEED)
        val_idx, keep = keep[val_pos], keep[fit_pos]
    train = take(splits.train, keep)
    train_plain = take(splits.train_eval, keep)
    ev = _subset_indices(len(keep), labels[keep], train_eval_size)
    test_labels = dataset_labels(splits.test)
    test_idx = _subset_indices(len(test_labels), test_labels, test_size)
    used = np.concatenate([keep, val_idx]) if val_idx is not None else keep
    rest_idx = np.setdiff1d(np.arange(len(labels)), used)
    return RunData(
        info=splits.info,
        train=train,
        train_plain=train_plain,
        train_eval=take(train_plain, ev),
        val=None if val_idx is None else take(splits.train_eval, val_idx),
        test=take(splits.test, test_idx) if len(test_idx) < len(test_labels) else splits.test,
        rest=take(splits.train_eval, rest_idx),
    )
