"""Run files: one HDF5 file per training run, readable with plain h5py, no pickles.

Layout (format "awp-landscape-run", version 1):

    /                         attrs: format, format_version, config (JSON), model (JSON), status,
                                     best_epoch, best_val_epoch, last_epoch (absent until known),
                                     versions (JSON: awp, torch, CUDA, h5py, numpy, python), created
    /metrics/<name>           float64 [n_epochs], one row per finished epoch (row i = epoch metrics/epoch[i])
    /weights/epoch_0010/<key> every state-dict tensor of that epoch, fletcher32-checksummed; attrs: epoch, dtype
    /weights/best, /last, /best_val   hard links to the matching epoch_NNNN group
    /resume/tensors/<key>     optimizer state (by parameter name) and RNG state, as tensors
    /resume                   attrs: epoch, state (JSON: optimizer param groups, schedule, seeds)
    /evaluations/<key>        attrs: record (JSON: one `landscape eval` of one epoch under one setting,
                                     `awp.robustness.record`); key = epoch and a hash of the settings

Every change is a transaction: the file is copied to `<run>.tmp`, changed there, flushed, fsynced and
moved over the run with `os.replace`, so a `kill -9` at any moment leaves the old or the new complete
file. Epoch weights that are neither a `save_every` multiple nor best/best_val/last are deleted;
the file keeps a persistent free-space map, so their space is reused.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from awp import __version__
from awp.attacks import AttackConfig
from awp.errors import UserError
from awp.safeio import atomic_write, check_output, exclusive, fsync_path, is_write_failure, tmp_path, write_failure

FORMAT = "awp-landscape-run"
FORMAT_VERSION = 1
EPOCH_SPECS = "best, last, best_val, reported, N, all or every:K"
_EPOCH_GROUP = re.compile(r"^epoch_(\d+)$")


# ---------------------------------------------------------------------------------------------
# Tensors <-> HDF5 (one dataset per tensor; dtypes numpy lacks are widened and named in an attribute)
# ---------------------------------------------------------------------------------------------


def _to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    dtype = str(t.dtype).removeprefix("torch.")
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy(), dtype


def write_tensors(group: h5py.Group, tensors: Mapping[str, torch.Tensor]) -> None:
    """One dataset per tensor under `group`; non-empty arrays get fletcher32 checksums."""
    for key, t in tensors.items():
        arr, dtype = _to_numpy(t)
        checks = arr.ndim > 0 and arr.size > 0  # scalars and empty arrays cannot be chunked
        ds = group.create_dataset(key, data=arr, fletcher32=checks, chunks=True if checks else None)
        ds.attrs["dtype"] = dtype


def read_tensors(group: h5py.Group) -> dict[str, torch.Tensor]:
    """Every dataset under `group` (nested names joined with '/') back as tensors, original dtypes."""
    out: dict[str, torch.Tensor] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            t = torch.from_numpy(np.array(obj[()]))
            dtype = obj.attrs.get("dtype")
            if dtype is not None:
                t = t.to(getattr(torch, str(dtype)))
            out[name] = t

    group.visititems(visit)
    return out


def _versions() -> dict[str, str | None]:
    return {
        "awp": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Atomic transactions
# ---------------------------------------------------------------------------------------------


def remove_stale_tmp(path: str | Path) -> None:
    """A `.tmp` left by a killed process is an unfinished transaction: drop it."""
    tmp_path(path).unlink(missing_ok=True)


@contextmanager
def transaction(path: str | Path, *, create: bool = False) -> Iterator[h5py.File]:
    """Change an HDF5 file all or nothing: work on `<file>.tmp` (a copy, or a new file when `create`),
    then flush, fsync and `os.replace` it onto the file. Any exception leaves the file untouched and
    removes the `.tmp`; a full or read-only disk becomes one `UserError` line."""
    path = Path(path)
    tmp = tmp_path(path)
    f = None
    try:
        if create:
            tmp.unlink(missing_ok=True)
            # A persistent free-space map lets later epochs reuse the space of deleted weights.
            f = h5py.File(tmp, "w", libver="v110", fs_strategy="fsm", fs_persist=True)
        else:
            shutil.copyfile(path, tmp)
            f = h5py.File(tmp, "r+")
        yield f
        f.flush()
        f.close()
        f = None
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if f is not None:
            with suppress(Exception):  # closing a file on a full disk raises again: the .tmp goes anyway
                f.close()
        with suppress(OSError):
            tmp.unlink()
        if is_write_failure(e):
            raise write_failure(path, e, f"{str(path)!r} keeps its last complete state") from None  # type: ignore[arg-type]
        raise
    with suppress(OSError):
        fsync_path(path.parent.resolve())


# ---------------------------------------------------------------------------------------------
# Writing a run
# ---------------------------------------------------------------------------------------------


def epoch_group_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def create_run(path: str | Path, config: Mapping[str, Any], model_meta: Mapping[str, Any]) -> None:
    """Start a run file holding the resolved config and what rebuilds the model; no epochs yet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with transaction(path, create=True) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.attrs["model"] = json.dumps(model_meta, sort_keys=True)
        f.attrs["versions"] = json.dumps(_versions(), sort_keys=True)
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["status"] = "running"
        f.create_group("metrics")
        f.create_group("weights")


def _best(values: np.ndarray, epochs: np.ndarray) -> int | None:
    """The epoch with the highest value (the earliest among ties); None when nothing is finite."""
    ok = np.isfinite(values)
    if not ok.any():
        return None
    i = int(np.argmax(np.where(ok, values, -np.inf)))
    return int(epochs[i])


@dataclass(frozen=True)
class ResumeState:
    """What resuming needs besides the last weights: tensors (optimizer buffers by parameter name,
    RNG state) and JSON (param groups, schedule, seeds)."""

    epoch: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def commit_epoch(
    path: str | Path,
    epoch: int,
    row: Mapping[str, float],
    state_dict: Mapping[str, torch.Tensor],
    resume: ResumeState,
    *,
    save_every: int,
) -> None:
    """Append one finished epoch in one transaction: its metrics row, its weights (always: it is the
    new last), best/best_val/last links, and the resume state; prune weights no longer needed."""
    with transaction(path) as f:
        metrics = f["metrics"]
        n = len(metrics["epoch"]) if "epoch" in metrics else 0
        values = {"epoch": float(epoch), **{k: float(v) for k, v in row.items()}}
        for name in set(values) | set(metrics):
            if name not in metrics:  # a metric first seen now: earlier rows are NaN
                metrics.create_dataset(name, data=np.full(n, np.nan), maxshape=(None,), chunks=(256,))
            ds = metrics[name]
            ds.resize((n + 1,))
            ds[n] = values.get(name, np.nan)
        epochs = metrics["epoch"][()].astype(int)

        weights = f["weights"]
        g = weights.create_group(epoch_group_name(epoch))
        g.attrs["epoch"] = epoch
        write_tensors(g, state_dict)

        marks = {"last": epoch}
        best = _best(metrics["test_adv_acc"][()], epochs) if "test_adv_acc" in metrics else None
        if best is not None:
            marks["best"] = best
        best_val = _best(metrics["val_adv_acc"][()], epochs) if "val_adv_acc" in metrics else None
        if best_val is not None:
            marks["best_val"] = best_val
        for attr in ("best", "best_val"):
            f.attrs.pop(f"{attr}_epoch", None)
        for mark, e in marks.items():
            f.attrs[f"{mark}_epoch"] = e
            if mark in weights:
                del weights[mark]
            weights[mark] = weights[epoch_group_name(e)]  # hard link
        keep = set(marks.values())
        for name in list(weights):
            m = _EPOCH_GROUP.match(name)
            if m and int(m.group(1)) not in keep and not (save_every > 0 and int(m.group(1)) % save_every == 0):
                del weights[name]

        if "resume" in f:
            del f["resume"]
        r = f.create_group("resume")
        r.attrs["epoch"] = resume.epoch
        r.attrs["state"] = json.dumps(resume.state, sort_keys=True)
        write_tensors(r.create_group("tensors"), resume.tensors)


def set_status(path: str | Path, status: str) -> None:
    """Record why a run ended ("finished", "stopped: ..."), in its own transaction."""
    with transaction(path) as f:
        f.attrs["status"] = status


# ---------------------------------------------------------------------------------------------
# Reading a run
# ---------------------------------------------------------------------------------------------


def epoch_ranges(epochs: list[int]) -> str:
    """[1, 2, 3, 5, 10] -> '1-3, 5, 10' for messages."""
    if not epochs:
        return "none"
    parts, start, prev = [], epochs[0], epochs[0]
    for e in epochs[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if e is not None:
            start = prev = e
    return ", ".join(parts)


class RunReader:
    """Read access to a run file. The file is opened per call, so a run that is still training
    (and replaces its file after every epoch) can be read at the same time."""

    # What rebuilds the model: every key `build_model` and `checkpoint_dict` read, with its JSON type.
    MODEL_KEYS: dict[str, type] = {
        "arch": str, "arch_kwargs": dict, "dataset": str, "num_classes": int, "in_channels": int, "mean": list, "std": list,
    }

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._open() as f:  # everything later calls rely on is checked once, here
            self.config: dict[str, Any] = self._json_object(f, "config")
            self.model_meta: dict[str, Any] = self._json_object(f, "model")
            self.versions: dict[str, Any] = self._versions(f)
            self.status: str = str(f.attrs.get("status", ""))
            self.best_epoch: int | None = self._opt_int(f, "best_epoch")
            self.best_val_epoch: int | None = self._opt_int(f, "best_val_epoch")
            self.last_epoch: int | None = self._opt_int(f, "last_epoch")
            for group in ("weights", "metrics"):
                if not isinstance(f.get(group), h5py.Group):
                    raise self.damaged(f"no /{group} group")
            self._saved = sorted(
                int(m.group(1)) for m in (_EPOCH_GROUP.match(k) for k in f["weights"]) if m
            )
        self._check_meta()

    def damaged(self, what: str) -> UserError:
        """The one-line error for a run file that is forged, truncated or from a broken writer."""
        return UserError(f"{str(self.path)!r} is a damaged or incomplete run file: {what}")

    def _json_object(self, f: h5py.File, key: str) -> dict[str, Any]:
        """A required attribute holding a JSON object (`config`, `model`)."""
        if key not in f.attrs:
            raise self.damaged(f"no {key!r} attribute")
        try:
            value = json.loads(f.attrs[key])
        except (TypeError, ValueError):
            raise self.damaged(f"the {key!r} attribute is not JSON") from None
        if not isinstance(value, dict):
            raise self.damaged(f"the {key!r} attribute is not a JSON object")
        return value

    @staticmethod
    def _versions(f: h5py.File) -> dict[str, Any]:
        """The writer's versions (informational): {} when absent or unreadable, never an error."""
        try:
            v = json.loads(f.attrs["versions"])
        except (KeyError, TypeError, ValueError):
            return {}
        return v if isinstance(v, dict) else {}

    def _opt_int(self, f: h5py.File, key: str) -> int | None:
        """An optional integer attribute (best_epoch, ...)."""
        v = f.attrs.get(key)
        if v is None:
            return None
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise self.damaged(f"{key} {v!r} is not an integer")
        return int(v)

    def _check_meta(self) -> None:
        """The model JSON has every key that rebuilds the model, and the config the threat model and data set."""
        meta = self.model_meta
        missing = [k for k in self.MODEL_KEYS if k not in meta]
        if missing:
            raise self.damaged(f"the model attribute lacks {', '.join(missing)}")
        wrong = [k for k, t in self.MODEL_KEYS.items() if not isinstance(meta[k], t) or isinstance(meta[k], bool)]
        if wrong:
            raise self.damaged(f"the model attribute has wrongly typed {', '.join(wrong)}")
        if not isinstance(self.config.get("dataset"), str) or not isinstance(self.config.get("attack"), dict):
            raise self.damaged("the config attribute lacks its dataset or attack")
        try:
            self.attack_config()
        except (TypeError, UserError) as e:
            raise self.damaged(f"the config's attack does not fit: {e}") from None

    @contextmanager
    def _open(self) -> Iterator[h5py.File]:
        if not self.path.exists():
            raise UserError(f"no run file at {str(self.path)!r}")
        if self.path.is_dir():
            raise UserError(f"{str(self.path)!r} is a directory, not a run file from `landscape train-awp`")
        try:
            f = h5py.File(self.path, "r")
        except OSError:
            raise UserError(f"{str(self.path)!r} is not an HDF5 file, so not a run file from `landscape train-awp`") from None
        try:
            if f.attrs.get("format") != FORMAT:
                raise UserError(f"{str(self.path)!r} is an HDF5 file but not a {FORMAT} run file (from `landscape train-awp`)")
            version = f.attrs.get("format_version")
            if version is None:
                raise self.damaged("no 'format_version' attribute")
            if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
                raise self.damaged(f"format_version {version!r} is not an integer")
            if version > FORMAT_VERSION:
                raise UserError(f"{str(self.path)!r} has run-file format version {version}; this awp {__version__} reads up to {FORMAT_VERSION}")
            yield f
        finally:
            f.close()

    # -- epochs --------------------------------------------------------------------------------

    def epochs_saved(self) -> list[int]:
        """Epochs that have weights in the file, sorted."""
        return list(self._saved)

    @property
    def reported_epoch(self) -> int | None:
        """The epoch the run reports as its model: its method's choice (AT-ES: the best on the validation
        split, i.e. early stopping), for every other method the last."""
        from awp.methods import get_method

        try:
            selects = get_method(self.config.get("method", "at")).selects
        except UserError:  # a method this version does not know: its last epoch
            selects = "last"
        return self.best_val_epoch if selects == "best_val" and self.best_val_epoch is not None else self.last_epoch

    def resolve_epochs(self, spec: str) -> list[int]:
        """'best' | 'last' | 'best_val' | 'reported' (the run's model: `reported_epoch`) | 'N' | 'all'
        (every saved epoch) | 'every:K' (saved epochs divisible by K, plus best, last and reported) ->
        sorted epochs that have weights."""
        text = str(spec).strip().lower()
        saved = self._saved
        named = {"best": self.best_epoch, "last": self.last_epoch, "best_val": self.best_val_epoch,
                 "reported": self.reported_epoch}
        if text in named:
            e = named[text]
            if e is None:
                hint = " (the run has no --val-split)" if text == "best_val" else " (no epoch has finished yet)"
                raise UserError(f"epoch {spec!r}: {str(self.path)!r} has no {text} epoch{hint}")
            return [e]
        if text == "all":
            if not saved:
                raise UserError(f"epoch 'all': {str(self.path)!r} has no saved epochs yet")
            return list(saved)
        if text.startswith("every:"):
            k_text = text.split(":", 1)[1]
            if not k_text.isdigit() or int(k_text) < 1:
                raise UserError(f"epoch spec {spec!r}: K in every:K must be a positive integer; accepted: {EPOCH_SPECS}")
            k = int(k_text)
            out = {e for e in saved if e % k == 0}
            out |= {e for e in (self.best_epoch, self.last_epoch, self.reported_epoch) if e is not None}
            return sorted(out)
        if text.isdigit():
            e = int(text)
            if e not in saved:
                raise UserError(
                    f"epoch {e} has no saved weights in {str(self.path)!r}; saved epochs: {epoch_ranges(saved)} "
                    f"(train with --save-every to keep more)"
                )
            return [e]
        raise UserError(f"epoch spec {spec!r} not understood; accepted: {EPOCH_SPECS}")

    # -- weights and models --------------------------------------------------------------------

    def state_dict(self, epoch: int) -> dict[str, torch.Tensor]:
        """Every state-dict tensor saved for `epoch` (checksums verified by HDF5 on read)."""
        if epoch not in self._saved:
            raise UserError(f"epoch {epoch} has no saved weights in {str(self.path)!r}; saved epochs: {epoch_ranges(self._saved)}")
        with self._open() as f:
            try:
                return read_tensors(f["weights"][epoch_group_name(epoch)])
            except (OSError, KeyError, AttributeError, TypeError, ValueError) as e:  # fletcher32, truncation, forgery
                raise UserError(f"weights of epoch {epoch} in {str(self.path)!r} are corrupt: {e}") from None

    def new_model(self) -> nn.Module:
        """The run's registry architecture, freshly initialized (under `torch.device("meta")`: shapes only)."""
        from awp.models import create_model

        meta = self.model_meta
        return create_model(
            meta["arch"], meta["num_classes"], meta["in_channels"], meta["mean"], meta["std"], **meta["arch_kwargs"]
        )

    def build_model(self, epoch: int, device: str | torch.device = "cpu") -> nn.Module:
        """The registry model with the weights of `epoch` loaded (strictly), in eval mode, on `device`."""
        model = self.new_model()
        self.load_into(model, epoch)
        return model.to(device).eval()

    def load_into(self, model: nn.Module, epoch: int) -> None:
        """Load the weights of `epoch` into `model` strictly (e.g. to resume); weights that do not fit the
        model are one line naming the missing, unexpected or mis-shaped keys, not a torch traceback."""
        from awp.models.loading import load_weights

        load_weights(model, self.state_dict(epoch), self.path, str(self.model_meta["arch"]))

    # -- metrics, threat model, data -----------------------------------------------------------

    def metrics(self) -> dict[str, np.ndarray]:
        """One float64 array per metric, one row per finished epoch (`epoch` holds the epoch numbers)."""
        with self._open() as f:
            try:
                return {k: np.asarray(v[()], dtype=np.float64) for k, v in f["metrics"].items()}
            except (OSError, AttributeError, TypeError, ValueError) as e:
                raise self.damaged(f"its metrics cannot be read ({e})") from None

    def attack_config(self) -> AttackConfig:
        """The training threat model: norm, eps, training step size (eta1) and steps (K1)."""
        return AttackConfig(**self.config["attack"])

    def train_config(self) -> Any:
        """The stored config as a `TrainConfig`; one that does not fit this version names the file."""
        from awp.trainconfig import TrainConfig

        try:
            return TrainConfig.from_dict(self.config)
        except UserError as e:
            raise self.damaged(str(e)) from None

    def data(self) -> Any:
        """The run's `awp.rundata.RunData`, rebuilt from its config: the same examples it saw. Deterministic."""
        from awp.rundata import run_data

        c = self.config
        return run_data(
            c["dataset"], c.get("data_dir", "data"), train_size=c.get("train_size", 0),
            train_eval_size=c.get("train_eval_size", 0), val_split=c.get("val_split", 0.0),
            test_size=c.get("test_size", 0),
        )

    def datasets(self) -> tuple[Dataset, Dataset]:
        """(train, test) as the run used them: the exact training examples (subset, minus any
        validation split) without augmentation, and the evaluation test set."""
        data = self.data()
        return data.train_plain, data.test

    def evaluations(self) -> list[dict[str, Any]]:
        """The robustness evaluations recorded in the file (`landscape eval`), oldest first; a record that
        cannot be read is skipped (it is a report, not what the run depends on)."""
        with self._open() as f:
            g = f.get("evaluations")
            out = []
            for key in (g if isinstance(g, h5py.Group) else {}):
                try:
                    rec = json.loads(g[key].attrs["record"])
                except (KeyError, TypeError, ValueError):
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
        return sorted(out, key=lambda r: str(r.get("evaluated", "")))

    def resume_state(self) -> ResumeState | None:
        """The optimizer/RNG state saved with the last epoch, or None before the first epoch."""
        with self._open() as f:
            if "resume" not in f:
                return None
            try:
                r = f["resume"]
                return ResumeState(int(r.attrs["epoch"]), read_tensors(r["tensors"]), json.loads(r.attrs["state"]))
            except (OSError, KeyError, AttributeError, TypeError, ValueError) as e:
                raise self.damaged(f"its resume state cannot be read ({type(e).__name__}: {e})") from None


def evaluation_key(record: Mapping[str, Any]) -> str:
    """Where a record goes in /evaluations: one per (epoch, settings); re-evaluating replaces it."""
    import hashlib

    settings = {k: record.get(k) for k in ("settings", "attacks")}
    settings["attacks"] = {n: a.get("settings") for n, a in (settings["attacks"] or {}).items()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    epoch = (record.get("checkpoint") or {}).get("epoch")
    return f"epoch_{epoch:04d}_{digest}" if isinstance(epoch, int) else f"none_{digest}"


def add_evaluation(path: str | Path, record: Mapping[str, Any]) -> None:
    """Record one evaluation of one of the run's epochs in the run file (its own transaction, under the
    run's lock: a run still training refuses, naming the process)."""
    with exclusive(path), transaction(path) as f:
        g = f.require_group("evaluations")
        key = evaluation_key(record)
        if key in g:
            del g[key]
        g.create_group(key).attrs["record"] = json.dumps(record, sort_keys=True, default=str)


def open_run(path: str | Path) -> RunReader:
    """Open a run file for reading; a missing file or one that is not a run file is a one-line `UserError`."""
    return RunReader(path)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def checkpoint_dict(reader: RunReader, epoch: int) -> dict[str, Any]:
    """A plain checkpoint of one epoch: tensors and plain values only, loadable with weights_only=True."""
    meta = reader.model_meta
    return {
        "state_dict": reader.state_dict(epoch),
        "arch": meta["arch"],
        "arch_kwargs": dict(meta["arch_kwargs"]),
        "dataset": meta["dataset"],
        "num_classes": int(meta["num_classes"]),
        "in_channels": int(meta["in_channels"]),
        "mean": [float(v) for v in meta["mean"]],
        "std": [float(v) for v in meta["std"]],
        "epoch": int(epoch),
        "config_json": json.dumps(reader.config, sort_keys=True),
    }


def export_checkpoint(run: str | Path, epoch_spec: str, out: str | Path, *, overwrite: bool = False) -> int:
    """Write epoch `best|last|best_val|N` of `run` to `out` (torch.save of `checkpoint_dict`); returns
    the epoch. An existing `out` is replaced only with `overwrite`, and never when it is a run file."""
    text = str(epoch_spec).strip().lower()
    if text == "all" or text.startswith("every:"):
        raise UserError(f"export takes one epoch, got {epoch_spec!r}; accepted: best, last, best_val or N")
    check_output(out, "-o", inputs=[run], overwrite=overwrite, writes="checkpoint export")
    reader = open_run(run)
    epochs = reader.resolve_epochs(epoch_spec)
    buf = io.BytesIO()  # serialized in memory: torch.save on a full disk fails with a RuntimeError, not an OSError
    torch.save(checkpoint_dict(reader, epochs[0]), buf)
    with exclusive(out):
        atomic_write(out, lambda tmp: tmp.write_bytes(buf.getbuffer()))
    return epochs[0]

