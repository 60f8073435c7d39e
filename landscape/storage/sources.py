"""What a probe looks at: the checkpoints of a run file (`train-awp`), or one `.pt` state dict.

A `.pt` is read with `weights_only=True` only. Our export carries its architecture, dataset and
training config; a foreign state dict needs --arch and --dataset and may carry DataParallel/DDP
`module.` prefixes (stripped) or lack our input-normalization layer (the dataset's mean/std is used).
Every checkpoint is identified by its file, epoch and the sha256 of its weights.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from awp.attacks import AttackConfig
from awp.errors import UserError
from awp.models import create_model
from awp.models.loading import load_weights, strip_prefix  # noqa: F401  (re-exported: landscape's old home)
from landscape.storage.results import CheckpointId, weights_sha256


@dataclass
class Checkpoint:
    """One set of weights: its identity and how to build the model with them (eval mode)."""

    ident: CheckpointId
    build: Callable[[torch.device], nn.Module]


@dataclass
class Source:
    """A checkpoint file, opened: its checkpoints, data, and the threat model it was trained with."""

    kind: str  # "run" or "pt"
    path: Path
    arch: str
    dataset: str
    checkpoints: list[Checkpoint]
    train_attack: AttackConfig | None  # None: the file does not say (a foreign .pt)
    datasets: Callable[[], tuple[Dataset, Dataset]]  # (exact training set, test set), unaugmented

    def parameters(self) -> dict[str, Tensor]:
        """The first checkpoint's parameters by name, built on the CPU: names and shapes for scopes and fits."""
        return {n: p.detach() for n, p in self.checkpoints[0].build(torch.device("cpu")).named_parameters()}


def _check_same(name: str, given: str | None, stored: str, path: Path) -> None:
    if given is not None and given != stored:
        raise UserError(f"--{name} {given!r} contradicts {str(path)!r}, which holds a {name} {stored!r}; drop --{name}")


def _run_datasets(config: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    """The training examples a run saw (subset and validation split applied, no augmentation), and its test set."""
    from awp.rundata import run_data

    data = run_data(
        config["dataset"], config.get("data_dir", "data"), train_size=config.get("train_size", 0),
        train_eval_size=config.get("train_eval_size", 0), val_split=config.get("val_split", 0.0),
        test_size=config.get("test_size", 0),
    )
    return data.train_plain, data.test


def _plain_datasets(dataset: str, data_dir: str) -> tuple[Dataset, Dataset]:
    """The whole training set (unaugmented) and the test set of a dataset."""
    from awp.data import load_dataset

    splits = load_dataset(dataset, data_dir)
    return splits.train_eval, splits.test


# ---------------------------------------------------------------------------------------------
# Run files
# ---------------------------------------------------------------------------------------------


def open_run_source(path: Path, epochs: str, arch: str | None, dataset: str | None, data_dir: str,
                    arch_kwargs: Mapping[str, Any] | None = None) -> Source:
    from awp.store import open_run

    reader = open_run(path)
    meta = reader.model_meta
    _check_same("arch", arch, meta["arch"], path)
    _check_same("dataset", dataset, meta["dataset"], path)
    with torch.device("meta"):  # shapes only: weights that do not fit are refused before any output is written
        skeleton = reader.new_model()
    ckpts = []
    for e in reader.resolve_epochs(epochs):
        sd = reader.state_dict(e)
        load_weights(skeleton, sd, path, meta["arch"])
        sha = weights_sha256(sd)
        tags = [t for m, t in ((reader.best_epoch, "best"), (reader.last_epoch, "last")) if m == e]
        label = f"epoch {e}" + (f" ({', '.join(tags)})" if tags else "")
        ckpts.append(Checkpoint(CheckpointId(str(path), e, sha, label), lambda device, e=e: reader.build_model(e, device)))
    return Source("run", path, meta["arch"], meta["dataset"], ckpts, reader.attack_config(), reader.datasets)


# ---------------------------------------------------------------------------------------------
# .pt files
# ---------------------------------------------------------------------------------------------


PICKLE_PROTO = b"\x80"  # the first byte of a pickle (protocol >= 2): a legacy torch.save or a plain pickle.dump


def _not_a_checkpoint(path: Path) -> UserError:
    return UserError(f"{str(path)!r} is neither a run file (HDF5 from `landscape train-awp`) nor a PyTorch .pt checkpoint")


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True, torch's warnings silenced (the one-line error says it all):
    a zip archive or a legacy pickle that holds more than tensors is refused without running any of it;
    a file that is neither (text, say) is never handed to the unpickler."""
    with path.open("rb") as fh:
        head = fh.read(1)
    pickled = zipfile.is_zipfile(path) or head == PICKLE_PROTO
    if not pickled:
        raise _not_a_checkpoint(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{str(path)!r} refused: it contains pickled objects besides tensors, and only weights_only "
                        f"checkpoints are read (save model.state_dict())") from None
    except Exception:  # a truncated archive, a pickle torch cannot read: whatever it is, not a checkpoint
        raise _not_a_checkpoint(path) from None


def _tensor_dict(obj: Any) -> dict[str, Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return dict(obj)
    return None


def open_pt_source(path: Path, epochs: str, arch: str | None, dataset: str | None, data_dir: str,
                   arch_kwargs: Mapping[str, Any] | None = None) -> Source:
    from awp.data import dataset_info

    if epochs not in ("last",):
        raise UserError(f"--epoch {epochs!r} selects epochs of a run file; {str(path)!r} is a single .pt checkpoint")
    obj = _torch_load(path)
    config: dict[str, Any] = {}
    epoch = None
    if isinstance(obj, Mapping) and "arch" in obj and _tensor_dict(obj.get("state_dict")) is not None:  # our export
        try:
            _check_same("arch", arch, str(obj["arch"]), path)
            _check_same("dataset", dataset, str(obj["dataset"]), path)
            arch, dataset = str(obj["arch"]), str(obj["dataset"])
            sd = obj["state_dict"]
            model = create_model(arch, int(obj["num_classes"]), int(obj["in_channels"]), obj["mean"], obj["std"],
                                 **dict(obj.get("arch_kwargs") or {}))
            epoch = int(obj["epoch"]) if obj.get("epoch") is not None else None
            config = json.loads(obj.get("config_json") or "{}")
            if not isinstance(config, dict):
                raise ValueError("config_json is not a JSON object")
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{str(path)!r} is a damaged export (from `landscape export`): {type(e).__name__}: {e}") from None
    else:  # a foreign state dict, maybe wrapped as {"state_dict": ...}
        sd = _tensor_dict(obj) or (_tensor_dict(obj.get("state_dict")) if isinstance(obj, Mapping) else None)
        if sd is None:
            raise UserError(f"{str(path)!r} holds no state dict (a mapping of parameter names to tensors)")
        if arch is None or dataset is None:
            raise UserError(f"{str(path)!r} is a bare state dict: give --arch and --dataset to rebuild its model")
        info = dataset_info(dataset)
        model = create_model(arch, info.num_classes, info.in_channels, info.mean, info.std, **dict(arch_kwargs or {}))
    load_weights(model, sd, path, arch)
    model.eval()
    sha = weights_sha256(model.state_dict())
    label = f"epoch {epoch}" if epoch is not None else path.name
    ckpt = Checkpoint(CheckpointId(str(path), epoch, sha, label), lambda device: model.to(device).eval())
    try:
        attack = AttackConfig(**config["attack"]) if isinstance(config.get("attack"), Mapping) else None
    except TypeError as e:
        raise UserError(f"{str(path)!r} is a damaged export: its training attack does not fit ({e})") from None
    if config.get("dataset") == dataset:  # our export: the exact training set of its run
        datasets = lambda: _run_datasets(config)  # noqa: E731
    else:
        datasets = lambda: _plain_datasets(dataset, data_dir)  # noqa: E731
    return Source("pt", path, arch, dataset, [ckpt], attack, datasets)


# ---------------------------------------------------------------------------------------------
# A model without a checkpoint file (MODULE:CALLABLE that loads its own weights, robustbench:NAME)
# ---------------------------------------------------------------------------------------------


def open_model_source(arch: str | None, dataset: str | None, data_dir: str = "data",
                      arch_kwargs: Mapping[str, Any] | None = None) -> Source:
    """The model `arch` builds as it is: `MODULE:CALLABLE` (your builder loads its weights) or
    `robustbench:NAME` (the zoo's); a registry name has no weights without a checkpoint and is refused."""
    from awp.data import dataset_info
    from awp.models.external import ROBUSTBENCH_PREFIX, check_model_output, is_import_spec

    kwargs = dict(arch_kwargs or {})
    if arch is None:
        raise UserError("missing CKPT (a run file or .pt), or --model MODULE:CALLABLE or robustbench:NAME")
    zoo = arch.startswith(ROBUSTBENCH_PREFIX)
    if not (zoo or is_import_spec(arch)):
        raise UserError(f"--model {arch!r} without CKPT would have random weights; give a checkpoint, or a model "
                        f"that loads its own: MODULE:CALLABLE or robustbench:NAME")
    dataset = dataset or (kwargs.get("dataset") if zoo else None)
    if dataset is None:
        raise UserError(f"--model {arch!r} needs --dataset (the data it classifies)")
    info = dataset_info(dataset)
    model = create_model(arch, info.num_classes, info.in_channels, info.mean, info.std, **kwargs).eval()
    if not zoo:
        check_model_output(model, arch, info.num_classes, info.input_shape)
    sha = weights_sha256(model.state_dict())
    ckpt = Checkpoint(CheckpointId(arch, None, sha, arch), lambda device: model.to(device).eval())
    return Source("model", Path(arch), arch, dataset, [ckpt], None, lambda: _plain_datasets(dataset, data_dir))


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------

Opener = Callable[..., Source]  # (path, epochs, arch, dataset, data_dir, arch_kwargs) -> Source
# (sniffer, opener) in order: the first whose sniffer accepts the file opens it.
OPENERS: list[tuple[Callable[[Path], bool], Opener]] = [
    (h5py.is_hdf5, open_run_source),
    (lambda p: True, open_pt_source),
]


def open_source(
    path: str | Path, epochs: str = "last", arch: str | None = None, dataset: str | None = None, data_dir: str = "data",
    arch_kwargs: Mapping[str, Any] | None = None,
) -> Source:
    """Open CKPT (a run file or a .pt); a missing or unreadable file is a one-line `UserError`."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"no checkpoint file at {str(path)!r}")
    for sniff, opener in OPENERS:
        if sniff(path):
            return opener(path, epochs, arch, dataset, data_dir, arch_kwargs)
    raise AssertionError("the last opener accepts every file")
