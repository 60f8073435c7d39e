"""Model registry: every architecture builds, takes CIFAR- and digits-sized pixels, and normalizes first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from awp.errors import UserError
from awp.models import Normalize, create_model, list_models, register_model
from awp.models.registry import MODELS
from awp.models.vgg import SafeMaxPool2d

REQUIRED = ("preactresnet18", "smallcnn", "vgg19_bn", "wrn34_10")


@pytest.fixture(autouse=True, scope="module")
def _two_threads() -> Iterator[None]:
    """The big nets run on 2 CPU threads so the suite stays polite on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(
    ("in_channels", "size", "num_classes"),
    [(3, 32, 10), (1, 8, 7)],
    ids=["cifar", "digits"],
)
def test_every_model_gives_logits_of_the_right_shape(
    name: str, in_channels: int, size: int, num_classes: int
) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels).eval()
    x = torch.rand(2, in_channels, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    assert model.arch == name


def test_list_models_is_sorted_and_has_the_required_names() -> None:
    names = list_models()
    assert names == sorted(names)
    assert set(REQUIRED) <= set(names)
    assert {"smallcnn_nobn", "wrn28_10"} <= set(names)


def test_unknown_name_raises_user_error_listing_known_names() -> None:
    with pytest.raises(UserError) as info:
        create_model("resnet9")
    msg = str(info.value)
    assert "resnet9" in msg and "\n" not in msg
    for name in REQUIRED:
        assert name in msg


def test_unknown_option_raises_user_error() -> None:
    with pytest.raises(UserError, match="widht"):
        create_model("smallcnn", widht=(8, 8, 8))


def test_normalize_subtracts_mean_and_divides_by_std() -> None:
    norm = Normalize(mean=[0.5, 0.25], std=[0.5, 0.25])
    x = torch.tensor([1.0, 0.5]).view(1, 2, 1, 1).expand(3, 2, 4, 4)
    out = norm(x)
    assert torch.allclose(out[:, 0], torch.full((3, 4, 4), 1.0))
    assert torch.allclose(out[:, 1], torch.full((3, 4, 4), 1.0))
    assert norm.mean.shape == (1, 2, 1, 1) and norm.std.shape == (1, 2, 1, 1)
    assert {n for n, _ in norm.named_buffers()} == {"mean", "std"}
    assert not list(norm.parameters())


def test_normalize_default_is_identity_and_is_the_first_layer() -> None:
    model = create_model("smallcnn", in_channels=3)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model.normalize(x), x)
    assert isinstance(next(iter(model.children())), Normalize)


def test_create_model_normalizes_before_the_net() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.4, 0.25)
    model = create_model("smallcnn", mean=mean, std=std).eval()
    x = torch.rand(2, 3, 8, 8)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net(manual), atol=1e-6)


def test_bad_statistics_raise_user_error() -> None:
    with pytest.raises(UserError, match="input channel"):
        create_model("smallcnn", in_channels=3, mean=[0.5, 0.5])
    with pytest.raises(UserError, match="positive"):
        create_model("smallcnn", in_channels=1, std=[0.0])


def test_state_dict_keys_are_normalize_and_net() -> None:
    keys = list(create_model("smallcnn", in_channels=1).state_dict())
    assert keys[:2] == ["normalize.mean", "normalize.std"]
    assert all(k.startswith(("normalize.", "net.")) for k in keys)
    assert any(k.startswith("net.") for k in keys)


def test_smallcnn_nobn_is_pure_relu_without_batchnorm() -> None:
    model = create_model("smallcnn_nobn", in_channels=1)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.bias is not None for c in convs)
    assert any(isinstance(m, nn.BatchNorm2d) for m in create_model("smallcnn").modules())


def test_smallcnn_widths_are_configurable() -> None:
    model = create_model("smallcnn", in_channels=1, widths=(4, 6, 8))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 6, 8]
    with pytest.raises(UserError):
        create_model("smallcnn", widths=(4, 6))


def test_safe_max_pool_skips_a_one_by_one_map() -> None:
    pool = SafeMaxPool2d()
    one = torch.randn(2, 5, 1, 1)
    assert torch.equal(pool(one), one)
    assert pool(torch.randn(2, 5, 2, 2)).shape == (2, 5, 1, 1)
    assert pool(torch.randn(2, 5, 3, 3)).shape == (2, 5, 2, 2)
    assert pool(torch.randn(2, 5, 32, 32)).shape == (2, 5, 16, 16)


def test_wideresnet_rejects_a_bad_depth() -> None:
    from awp.models.wideresnet import _wideresnet

    with pytest.raises(UserError, match="6n\\+4"):
        _wideresnet("wrn", 30, 1, 10, 3)


def test_duplicate_registration_is_refused_like_every_registry() -> None:
    def _tmp_test_model(num_classes: int, in_channels: int) -> nn.Module:
        return nn.Flatten()

    try:
        register_model(_tmp_test_model)
        with pytest.raises(ValueError, match="registered twice"):
            register_model(_tmp_test_model)
        assert "_tmp_test_model" in list_models()
    finally:
        MODELS.unregister("_tmp_test_model")
