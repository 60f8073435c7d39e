"""Random directions (Alg. 1 lines 2-7): filter normalization (Eq. 5), zeros on 1-D parameters (or
d = w with include_1d, as Li et al.), regenerable from (seed, k) whatever the device, the draw order
or the parameter order, and from the JSON spec a results file records."""

from __future__ import annotations

import json

import pytest
import torch

from awp.errors import UserError
from awp.models import create_model
from landscape.core.directions import DIRECTIONS, NORMALIZATIONS, build_direction, random_direction, random_specs


@pytest.fixture(scope="module")
def params():
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1, (0.3,), (0.4,))
    return {n: p.detach() for n, p in model.named_parameters()}


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def test_filter_normalization_matches_each_filter_norm_and_zeroes_1d(params):
    d = random_direction(params, seed=0, k=0, normalize="filter")
    assert d.keys() == params.keys()
    multi = [n for n, w in params.items() if w.dim() > 1]
    assert len(multi) == 4  # three convs and the classifier
    for name, w in params.items():
        assert d[name].shape == w.shape
        if w.dim() > 1:  # Eq. 5: ||d_{l,j}||_F = ||w_{l,j}||_F for every filter j
            torch.testing.assert_close(_filter_norms(d[name]), _filter_norms(w), rtol=1e-5, atol=0)
        else:  # biases and BatchNorm: no direction
            assert torch.count_nonzero(d[name]) == 0


@pytest.mark.parametrize("normalize", list(NORMALIZATIONS))
def test_include_1d_gives_1d_parameters_their_own_weight_as_direction(params, normalize):
    """Li et al. (net_plotter, ignore != 'biasbn'): d_l = w_l for biases and BatchNorm, whatever the
    normalization and the seed; the other parameters are exactly the default direction."""
    d = random_direction(params, seed=0, k=0, normalize=normalize, include_1d=True)
    other = random_direction(params, seed=5, k=3, normalize=normalize, include_1d=True)
    plain = random_direction(params, seed=0, k=0, normalize=normalize)
    one_d = [n for n, w in params.items() if w.dim() <= 1]
    assert one_d
    for name, w in params.items():
        if w.dim() <= 1:
            assert torch.equal(d[name], w) and torch.equal(other[name], w)
        else:
            assert torch.equal(d[name], plain[name])


def test_layer_normalization_matches_each_layer_norm(params):
    d = random_direction(params, seed=3, k=1, normalize="layer")
    for name, w in params.items():
        if w.dim() > 1:
            assert d[name].norm().item() == pytest.approx(w.norm().item(), rel=1e-5)


def test_direction_k_depends_only_on_seed_k_and_name(params):
    a = random_direction(params, seed=7, k=2)
    for k in range(2):  # drawing other directions first changes nothing
        random_direction(params, seed=7, k=k)
    b = random_direction(dict(reversed(list(params.items()))), seed=7, k=2)  # nor does parameter order
    assert all(torch.equal(a[n], b[n]) for n in params)
    c = random_direction(params, seed=7, k=3)
    d = random_direction(params, seed=8, k=2)
    w = next(n for n, t in params.items() if t.dim() > 1)
    assert not torch.equal(a[w], c[w]) and not torch.equal(a[w], d[w])
    # 'none' is the raw Gaussian draw the normalizations rescale.
    raw = random_direction(params, seed=7, k=2, normalize="none")
    cos = torch.nn.functional.cosine_similarity(raw[w].flatten(), a[w].flatten(), dim=0)
    assert cos > 0.5


def test_a_random_spec_rebuilds_direction_k(params):
    """What a results file records of a random direction (its JSON spec) rebuilds it exactly."""
    specs = random_specs(3, seed=7, normalize="layer", include_bn=True)
    assert [s["index"] for s in specs] == [0, 1, 2] and all(DIRECTIONS.lookup(s["kind"]).regenerable for s in specs)
    for k, spec in enumerate(specs):
        d = build_direction(json.loads(json.dumps(spec)), params)
        ref = random_direction(params, seed=7, k=k, normalize="layer", include_1d=True)
        assert d.keys() == params.keys() and all(torch.equal(d[n], ref[n]) for n in params)
    with pytest.raises(UserError, match="unknown --direction kind 'nope'"):
        build_direction({"kind": "nope"}, params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_direction_does_not_depend_on_device(params):
    on_gpu = {n: p.cuda() for n, p in params.items()}
    a, b = random_direction(params, 0, 0), random_direction(on_gpu, 0, 0)
    assert all(torch.equal(a[n], b[n]) for n in params)


def test_unknown_normalization_is_a_user_error(params):
    with pytest.raises(UserError, match="accepted: " + ", ".join(NORMALIZATIONS)):
        random_direction(params, 0, 0, normalize="unit")
