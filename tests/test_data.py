"""The embedded digits: offline, documented shapes, a fixed stratified split; clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from awp.data import DIGITS_TEST_SIZE, batches, class_stratified_subset, dataset_info, load_dataset, stratified_split
from awp.errors import UserError


def test_digits_shapes_and_split(digits):
    x_tr, y_tr = digits.train.tensors
    x_te, y_te = digits.test.tensors
    assert len(x_tr) + len(x_te) == 1797
    assert len(x_te) == DIGITS_TEST_SIZE == 500
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.dtype == torch.float32
    assert 0 <= float(x_tr.min()) and float(x_tr.max()) <= 1 and float(x_tr.max()) == 1.0
    # Stratified: every class's test share is within one example of proportional.
    all_y = torch.cat([y_tr, y_te]).numpy()
    expected = np.bincount(all_y) * 500 / 1797
    assert np.all(np.abs(np.bincount(y_te.numpy(), minlength=10) - expected) < 1.0)
    # Fixed: loading again gives exactly the same split; train and test are disjoint images.
    again = load_dataset("digits")
    assert torch.equal(again.test.tensors[0], x_te) and torch.equal(again.train.tensors[1], y_tr)
    info = digits.info
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 8)


def test_stratified_split_sizes():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    a, b = stratified_split(labels, 12, seed=0)
    assert len(a) == 12 and len(b) == 48 and not set(a) & set(b)
    assert list(np.bincount(labels[a])) == [2, 4, 6]


def test_subset_is_stratified_and_fixed(digits):
    s1 = class_stratified_subset(digits.train, 100, seed=0)
    s2 = class_stratified_subset(digits.train, 100, seed=0)
    assert len(s1) == 100 and torch.equal(s1.tensors[0], s2.tensors[0])
    assert np.bincount(s1.tensors[1].numpy()).min() >= 9


def test_batches_cover_once_and_are_seeded(digits):
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = [y for _, y in batches(digits.train, 100, shuffle=True, generator=g1)]
    b = [y for _, y in batches(digits.train, 100, shuffle=True, generator=g2)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == sorted(digits.train.tensors[1].tolist())


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*digits"):
        dataset_info("mnist")


def test_missing_cifar_files_say_how_to_get_them(tmp_path):
    with pytest.raises(UserError, match="landscape download cifar10 --data-dir"):
        load_dataset("cifar10", tmp_path)


def _fake_torchvision(monkeypatch):
    """Replace the torchvision loader by one that records each split's transform (no files needed)."""
    import awp.data as data

    made = []

    def fake(name, root, *, train, transform=None, **kw):
        ds = torch.utils.data.TensorDataset(torch.zeros(4, 3, 32, 32), torch.arange(4))
        ds.transform, ds.is_train = transform, train
        made.append(ds)
        return ds

    monkeypatch.setattr(data, "_torchvision_set", fake)
    return made


def test_svhn_trains_without_augmentation_cifar_with_crop_and_flip(monkeypatch, tmp_path):
    from torchvision import transforms as T

    _fake_torchvision(monkeypatch)
    # SVHN: the reference trains on ToTensor() alone; SGD sees the plain training set itself.
    svhn = load_dataset("svhn", tmp_path)
    assert dataset_info("svhn").augment == () and svhn.train is svhn.train_eval
    assert [type(t) for t in svhn.train.transform.transforms] == [T.ToTensor]
    # CIFAR: 4-pixel padded random crop and horizontal flip (Section 5.1), the plain copy without them.
    for name in ("cifar10", "cifar100"):
        c = load_dataset(name, tmp_path)
        ops = c.train.transform.transforms
        assert [type(t) for t in ops] == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor]
        assert ops[0].padding == 4 and ops[0].size == (32, 32)
        assert [type(t) for t in c.train_eval.transform.transforms] == [T.ToTensor]
        assert [type(t) for t in c.test.transform.transforms] == [T.ToTensor] and not c.test.is_train
