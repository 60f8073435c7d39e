"""Datasets by name: the embedded UCI digits (default, no download) and torchvision's CIFAR-10/100 and SVHN;
and the user's own files, `npz:PATH` and `folder:PATH` (`awp.data.files`).

Every dataset yields images in [0, 1], NCHW float32, so every eps is in pixel space; the per-dataset
mean/std live in `DatasetInfo` and become the model's first layer (`awp.models.Normalize`).
"""

from __future__ import annotations

import importlib.resources
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from awp.errors import UserError
from awp.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, channels, image size, normalization; and
    the training augmentation, names from `AUGMENTATIONS` applied in order (none: SGD sees the images)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # the height, and the width unless `width` says otherwise
    mean: tuple[float, ...]
    std: tuple[float, ...]
    needs_download: bool
    augment: tuple[str, ...] = ()
    width: int = 0  # set only for non-square images (file datasets); 0: square

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of one image."""
        return (self.in_channels, self.image_size, self.width or self.image_size)


@dataclass
class Splits:
    """Train and test sets of one dataset; `train_eval` is `train` without augmentation (same order)."""

    info: DatasetInfo
    train: Dataset
    train_eval: Dataset
    test: Dataset


@dataclass(frozen=True)
class DatasetEntry:
    info: DatasetInfo
    load: Callable[..., Splits]


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def _register(info: DatasetInfo):
    def deco(fn: Callable[..., Splits]) -> Callable[..., Splits]:
        DATASETS.register(info.name, DatasetEntry(info, fn))
        return fn

    return deco


FILE_FORMS = "npz:PATH (arrays x, y or x_train, y_train, x_test, y_test), or folder:PATH (images in class folders)"


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def _entry(name: str) -> DatasetEntry:
    if isinstance(name, str) and name in DATASETS:
        return DATASETS[name]
    raise UserError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}, {FILE_FORMS}")


def resolve_dataset(name: str) -> str:
    """The name to store in a config: `npz:PATH` / `folder:PATH` with PATH absolute, so a run file
    reloads its data from any directory; a named dataset as given."""
    from awp.data.files import resolve_name

    return resolve_name(name)


def dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of `name` (a file dataset's is computed from its files); an unknown name is a
    `UserError` listing the accepted ones."""
    from awp.data.files import file_dataset_info, is_file_dataset

    return file_dataset_info(name) if is_file_dataset(name) else _entry(name).info


def load_dataset(name: str, data_dir: str | Path = "data", *, seed: int = 0) -> Splits:
    """Load dataset `name` (train split augmented where the dataset calls for it); `data_dir` is where
    named datasets live, a file dataset's PATH is its own (relative: from the current directory)."""
    from awp.data.files import is_file_dataset, load_file_dataset

    if is_file_dataset(name):
        return load_file_dataset(name)
    return _entry(name).load(Path(data_dir), seed=seed)


# ---------------------------------------------------------------------------------------------
# digits: the embedded default
# ---------------------------------------------------------------------------------------------

DIGITS_TEST_SIZE = 500  # a 500-image test split: with 250 the noise (~0.03) is as large as the effects


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI 8x8 digits shipped with the package: uint8 pixels 0..16, labels 0..9."""
    with importlib.resources.files("awp.data").joinpath("digits.npz").open("rb") as fh:
        z = np.load(fh)
        return z["images"], z["labels"]


def stratified_split(labels: np.ndarray, n_first: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (first, rest) with `n_first` in `first`, class proportions kept, from `seed`."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Largest-remainder allocation so the per-class quotas sum exactly to n_first.
    quota = counts * n_first / counts.sum()
    take = np.floor(quota).astype(int)
    rest = n_first - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:rest]] += 1
    first, second = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        first.append(idx[:k])
        second.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


@_register(DatasetInfo("digits", 10, 1, 8, (0.3,), (0.4,), needs_download=False))
def _load_digits(data_dir: Path, seed: int = 0) -> Splits:
    images, labels = _digits_arrays()
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]
    y = torch.from_numpy(labels.astype(np.int64))
    # The train/test split is fixed (seed 0) so that every run and every checkpoint sees the same test set.
    test_idx, train_idx = stratified_split(labels, DIGITS_TEST_SIZE, seed=0)
    train = TensorDataset(x[train_idx], y[train_idx])
    return Splits(DATASETS["digits"].info, train, train, TensorDataset(x[test_idx], y[test_idx]))


# ---------------------------------------------------------------------------------------------
# torchvision datasets (need a download)
# ---------------------------------------------------------------------------------------------

# Training augmentations by name: (torchvision.transforms, DatasetInfo) -> a transform on PIL images.
AUGMENTATIONS: dict[str, Callable] = {
    "crop": lambda T, info: T.RandomCrop(info.image_size, padding=4),  # 4-pixel padded random crop
    "flip": lambda T, info: T.RandomHorizontalFlip(),
}

# CIFAR: random crop (pad 4) + horizontal flip (Section 5.1; Rice et al. and csdongxian/AWP train_cifar*.py).
_CIFAR10 = DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), True, ("crop", "flip"))
_CIFAR100 = DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True, ("crop", "flip"))
# SVHN: none; csdongxian/AWP and Rice et al.'s train_svhn.py train on `transforms.ToTensor()` alone.
_SVHN = DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), True)


def _torchvision_set(name: str, root: Path, *, train: bool, **kw) -> Dataset:
    """The torchvision dataset `name` (SVHN names its splits, CIFAR takes `train=`)."""
    import torchvision

    if name == "svhn":
        return torchvision.datasets.SVHN(str(root), split="train" if train else "test", **kw)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    return cls(str(root), train=train, **kw)


def augmentations(info: DatasetInfo) -> list:
    """The training transforms `info.augment` names, in order (an empty list: no augmentation)."""
    from torchvision import transforms as T

    return [AUGMENTATIONS[name](T, info) for name in info.augment]


def _vision(info: DatasetInfo, data_dir: Path, *, train: bool, augment: bool) -> Dataset:
    from torchvision import transforms as T

    tf = T.Compose((augmentations(info) if augment else []) + [T.ToTensor()])
    try:
        return _torchvision_set(info.name, data_dir, train=train, transform=tf)
    except RuntimeError:
        raise UserError(
            f"{info.name} files not found in {str(data_dir)!r}; fetch them with "
            f"`landscape download {info.name} --data-dir {data_dir}` on a machine that is online"
        ) from None


def _vision_loader(info: DatasetInfo):
    def load(data_dir: Path, seed: int = 0) -> Splits:
        plain = _vision(info, data_dir, train=True, augment=False)
        # Without augmentation SGD sees the plain training set: one copy in memory, not two.
        train = _vision(info, data_dir, train=True, augment=True) if info.augment else plain
        return Splits(info, train, plain, _vision(info, data_dir, train=False, augment=False))

    return load


for _info in (_CIFAR10, _CIFAR100, _SVHN):
    _register(_info)(_vision_loader(_info))


def source_urls(name: str) -> list[str]:
    """Where torchvision fetches dataset `name` from (for fetching the files by hand)."""
    import torchvision

    if name == "svhn":
        return [v[0] for v in torchvision.datasets.SVHN.split_list.values() if v[1] in ("train_32x32.mat", "test_32x32.mat")]
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    return [cls.url]


def _files(root: Path) -> set[Path]:
    """Every file and directory under `root` (nothing when it does not exist)."""
    return set(root.rglob("*")) if root.is_dir() else set()


def _remove_new(root: Path, before: set[Path], root_existed: bool) -> None:
    """Delete what a failed download created under `root` (a partial archive must not look complete)."""
    for p in sorted(_files(root) - before, key=lambda q: len(q.parts), reverse=True):
        try:
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass
    if not root_existed:
        try:
            root.rmdir()
        except OSError:
            pass


def download(name: str, data_dir: str | Path) -> None:
    """Fetch a torchvision dataset into `data_dir` (needs internet); digits needs nothing. Offline, or on
    any failure, it is one line saying how to get the files by hand, and what it had written is removed."""
    info = dataset_info(name)
    if not info.needs_download:
        return
    root = Path(data_dir)
    existed, before = root.is_dir(), _files(root)
    try:
        for train in (True, False):
            _torchvision_set(name, root, train=train, download=True)
    except BaseException as e:
        _remove_new(root, before, existed)
        if not isinstance(e, (OSError, RuntimeError, EOFError, tarfile.TarError)):  # Ctrl-C and bugs keep their meaning
            raise
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"could not download {name} (the network is unreachable or the download failed: {reason}); "
            f"on a machine with internet run `landscape download {name} --data-dir DIR` and copy DIR to "
            f"{str(root)!r}, or fetch {' and '.join(source_urls(name))} into it by hand and run this again"
        ) from None


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def class_stratified_subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A fixed, class-stratified subset of `n` examples (the whole set when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(ds):
        return ds
    labels = dataset_labels(ds)
    idx, _ = stratified_split(labels, n, seed)
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[torch.from_numpy(idx)] for t in ds.tensors))
    return Subset(ds, idx.tolist())


def dataset_labels(ds: Dataset) -> np.ndarray:
    """Labels of `ds` without decoding images where the dataset allows it."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy()
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices)]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr))
    return np.asarray([ds[i][1] for i in range(len(ds))])


def batches(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches on `device`. In-memory tensors are sliced directly (no per-example work);
    other datasets go through a DataLoader. Order comes from `generator` only, so a seeded generator
    gives the same batches on every run and after a resume."""
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            else:
                sel = order[start : start + batch_size]
                xb, yb = x[sel], y[sel]
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        return
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=str(device).startswith("cuda"),
        persistent_workers=False,
    )
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
