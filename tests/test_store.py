"""Run files: layout, checksums, best/last links, pruning, epoch specs, atomic transactions, readers."""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from awp.errors import UserError
from awp.models import create_model
from awp.store import (
    FORMAT,
    ResumeState,
    commit_epoch,
    create_run,
    open_run,
    read_tensors,
    remove_stale_tmp,
    tmp_path as run_tmp,
    transaction,
    write_tensors,
)
from awp.trainconfig import resolve_config

MODEL = {"arch": "smallcnn", "arch_kwargs": {"widths": [4, 8, 8]}, "dataset": "digits", "num_classes": 10,
         "in_channels": 1, "mean": [0.3], "std": [0.4], "image_size": 8}


def _config(**kw):
    flags = {"arch_kwargs": '{"widths": [4, 8, 8]}', "train_size": 60, "train_eval_size": 30, "test_size": 50}
    flags.update(kw)
    return resolve_config(flags).to_dict()


def _state(epoch: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(epoch)
    return create_model("smallcnn", 10, 1, [0.3], [0.4], widths=(4, 8, 8)).state_dict()


def _fake_run(path, test_adv, *, save_every=3, val=None):
    create_run(path, _config(), MODEL)
    for i, acc in enumerate(test_adv, start=1):
        row = {"test_adv_acc": acc, "train_adv_acc": acc + 0.1, "test_nat_acc": 0.9, "gap": 0.1}
        if val is not None:
            row["val_adv_acc"] = val[i - 1]
        resume = ResumeState(i, {"optimizer/x/momentum_buffer": torch.ones(3) * i}, {"epoch": i})
        commit_epoch(path, i, row, _state(i), resume, save_every=save_every)


def test_layout_links_pruning_and_checksums(tmp_path):
    path = tmp_path / "run.h5"
    _fake_run(path, [0.1, 0.3, 0.2, 0.25, 0.28, 0.27, 0.26])
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["config"])["dataset"] == "digits"
        assert {"torch", "cuda", "awp"} <= set(json.loads(f.attrs["versions"]))
        assert f["metrics/epoch"][()].tolist() == list(range(1, 8))
        groups = sorted(k for k in f["weights"] if k.startswith("epoch_"))
        # save_every 3 keeps 3 and 6; best (2) and last (7) stay; 1, 4, 5 are pruned.
        assert groups == ["epoch_0002", "epoch_0003", "epoch_0006", "epoch_0007"]
        assert f["weights/best"] == f["weights/epoch_0002"] and f["weights/last"] == f["weights/epoch_0007"]
        conv = f["weights/epoch_0007/net.0.weight"]
        assert conv.fletcher32
        assert f["resume"].attrs["epoch"] == 7
    r = open_run(path)
    assert (r.best_epoch, r.last_epoch, r.best_val_epoch) == (2, 7, None)
    assert r.epochs_saved() == [2, 3, 6, 7]
    sd = r.state_dict(6)
    for k, t in _state(6).items():
        assert torch.equal(sd[k], t) and sd[k].dtype == t.dtype, k
    assert r.metrics()["test_adv_acc"].shape == (7,)
    assert r.resume_state().tensors["optimizer/x/momentum_buffer"].tolist() == [7.0, 7.0, 7.0]


def test_free_space_is_reused(tmp_path):
    path = tmp_path / "run.h5"
    _fake_run(path, [0.1 * i for i in range(1, 4)], save_every=0)
    size = path.stat().st_size
    _fake_run(tmp_path / "long.h5", [0.1 * i for i in range(1, 21)], save_every=0)
    assert (tmp_path / "long.h5").stat().st_size < 2 * size  # pruned weights do not pile up


def test_resolve_epochs(tmp_path):
    path = tmp_path / "run.h5"
    _fake_run(path, [0.1, 0.3, 0.2, 0.25, 0.28, 0.27, 0.26], save_every=2, val=[0.1, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1])
    r = open_run(path)
    assert r.epochs_saved() == [2, 4, 6, 7]
    assert r.resolve_epochs("best") == [2]
    assert r.resolve_epochs("last") == [7]
    assert r.resolve_epochs("best_val") == [4]
    assert r.resolve_epochs("4") == [4]
    assert r.resolve_epochs("all") == [2, 4, 6, 7]
    assert r.resolve_epochs("every:3") == [2, 6, 7]
    for bad, needle in [("5", "epoch 5 has no saved weights"), ("every:0", "every:K"), ("bset", "accepted: best, last")]:
        with pytest.raises(UserError, match=needle):
            r.resolve_epochs(bad)


def test_reader_rebuilds_model_and_data(tmp_path):
    path = tmp_path / "run.h5"
    _fake_run(path, [0.1, 0.2])
    r = open_run(path)
    model = r.build_model(2)
    assert not model.training
    x = torch.rand(4, 1, 8, 8)
    ref = create_model("smallcnn", 10, 1, [0.3], [0.4], widths=(4, 8, 8))
    ref.load_state_dict(_state(2))
    assert torch.equal(model(x), ref.eval()(x))
    train, test = r.datasets()
    assert len(train) == 60 and len(test) == 50
    a = r.attack_config()
    assert (a.norm, a.eps, a.step_size, a.steps) == ("linf", 0.25, 0.0625, 10)


def test_not_a_run_file(tmp_path):
    with pytest.raises(UserError, match="no run file"):
        open_run(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(UserError, match="not an HDF5 file"):
        open_run(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(UserError, match="not a awp-landscape-run run file"):
        open_run(tmp_path / "other.h5")


def test_failed_transaction_leaves_the_run_untouched(tmp_path):
    path = tmp_path / "run.h5"
    _fake_run(path, [0.1, 0.2])
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with transaction(path) as f:
            f.attrs["status"] = "half-written"
            raise RuntimeError("killed")
    assert path.read_bytes() == before
    assert not run_tmp(path).exists()
    run_tmp(path).write_bytes(b"stale junk")  # what a kill -9 mid-commit leaves
    remove_stale_tmp(path)
    assert not run_tmp(path).exists()
    assert open_run(path).last_epoch == 2


def test_tensor_dtypes_round_trip(tmp_path):
    tensors = {
        "a/b": torch.randn(3, 4),
        "n": torch.tensor(5, dtype=torch.int64),
        "h": torch.randn(7).to(torch.bfloat16),
        "e": torch.zeros(0),
        "d": torch.randn(2, dtype=torch.float64),
    }
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_tensors(f.create_group("g"), tensors)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        back = read_tensors(f["g"])
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k


def test_corrupt_weights_are_detected(tmp_path):
    path = tmp_path / "run.h5"
    _fake_run(path, [0.1])
    with h5py.File(path, "r") as f:
        ds = f["weights/epoch_0001/net.0.weight"]
        offset = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        open_run(path).state_dict(1)
