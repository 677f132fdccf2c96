"""RealNVP baseline: shapes, exact inverse, exact log-determinant, batch independence, size."""

import json
import math

import pytest
import torch

from lunet.baselines.realnvp import PAPER_PARAMETERS, RealNVP
from lunet.experiments.config.models import build_model
from lunet.latent import standard_normal_log_prob

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = [torch.float32, torch.float64]
SMALL = dict(in_channels=1, image_size=28, num_scales=2, mid_channels=8, num_res_blocks=1)
TINY = dict(in_channels=1, image_size=4, num_scales=2, mid_channels=4, num_res_blocks=1)


def randomize(model, std=0.1, seed=0):
    """Perturb every parameter, so that no coupling is the identity of the zero init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def make(config=SMALL, dtype=torch.float64, seed=0, std=0.1):
    torch.manual_seed(seed)
    return randomize(RealNVP(**config), std=std, seed=seed).to(dtype)


def logit_like(n, features, dtype=torch.float64, seed=1):
    """Batch in the range of logit-space images (roughly [-14, 14])."""
    gen = torch.Generator().manual_seed(seed)
    return (5 * torch.randn(n, features, generator=gen, dtype=torch.float64)).clamp(-14, 14).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_and_dtypes(dtype):
    model = make(dtype=dtype)
    assert model.features == 784
    x = logit_like(3, 784, dtype)
    z, logdet = model(x)
    assert z.shape == (3, 784) and z.dtype == dtype
    assert logdet.shape == (3,) and logdet.dtype == dtype
    assert model.inverse(z)[0].shape == (3, 784) and model.inverse(z)[0].dtype == dtype
    lp = model.log_prob(x)
    assert lp.shape == (3,) and lp.dtype == dtype and bool(torch.isfinite(lp).all())
    with torch.no_grad():
        s = model.sample(5, generator=torch.Generator().manual_seed(3))
        again = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert s.shape == (5, 784) and s.dtype == dtype and bool(torch.isfinite(s).all())
    assert torch.equal(s, again)


def test_sample_is_gradient_free_and_rsample_differentiable():
    torch.manual_seed(0)
    model = RealNVP(**TINY).double()
    drawn = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert drawn.grad_fn is None
    kept = model.rsample(3, generator=torch.Generator().manual_seed(1))
    assert kept.grad_fn is not None and torch.allclose(kept, drawn, rtol=0, atol=1e-12)


def test_fresh_default_model_is_a_permutation():
    # Zero-initialised output convolutions: every coupling starts as the identity,
    # so the default model maps x to a rearrangement of x with log-det 0.
    model = RealNVP()
    x = logit_like(2, 784, torch.float32)
    with torch.no_grad():
        z, logdet = model(x)
    assert z.shape == (2, 784)
    assert torch.equal(logdet, torch.zeros(2))
    assert torch.equal(z.sort(dim=1).values, x.sort(dim=1).values)
    assert not torch.equal(z, x)  # the factored-out half comes first


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
def test_round_trips_with_random_weights(dtype, tol):
    model = make(dtype=dtype, seed=2)
    x = logit_like(4, 784, dtype, seed=4)
    with torch.no_grad():
        z, logdet = model(x)
        # far from the identity: the round trips below test real work
        assert logdet.abs().min().item() > 10.0
        assert (z.sort(dim=1).values - x.sort(dim=1).values).abs().max().item() > 1.0
        err_x = ((model.inverse(z)[0] - x).abs() / x.abs().clamp_min(1)).max().item()
        zz = torch.randn(4, 784, dtype=dtype, generator=torch.Generator().manual_seed(5))
        err_z = ((model(model.inverse(zz)[0])[0] - zz).abs() / zz.abs().clamp_min(1)).max().item()
    assert err_x < tol
    assert err_z < tol


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        dict(TINY, num_scales=1),
        dict(in_channels=2, image_size=4, num_scales=3, mid_channels=4, num_res_blocks=2),
    ],
    ids=["1x4x4-2scales", "1x4x4-1scale", "2x4x4-3scales"],
)
def test_logdet_matches_autograd_jacobian(config):
    model = make(config, dtype=torch.float64, seed=7, std=0.3)
    xs = logit_like(3, model.features, seed=8)
    for x in xs:
        jac = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0].squeeze(0), x)
        sign, expected = torch.linalg.slogdet(jac)
        got = model(x.unsqueeze(0))[1].item()
        assert sign.item() == 1.0  # affine couplings with positive scales preserve orientation
        assert abs(expected.item()) > 0.1
        assert got == pytest.approx(expected.item(), abs=1e-10)


def test_log_prob_is_change_of_variables():
    model = make(seed=3)
    x = logit_like(3, 784, seed=9)
    z, logdet = model(x)
    expected = -0.5 * (z**2).sum(1) - 0.5 * 784 * math.log(2 * math.pi) + logdet
    assert torch.allclose(model.log_prob(x), expected, rtol=0, atol=1e-9)
    assert torch.allclose(standard_normal_log_prob(z) + logdet, model.log_prob(x), rtol=0, atol=1e-9)


def test_density_same_in_train_and_eval_and_per_sample():
    model = make(seed=4)
    x = logit_like(6, 784, seed=10)
    model.train()
    lp_train = model.log_prob(x)
    model.eval()
    lp_eval = model.log_prob(x)
    assert torch.allclose(lp_train, lp_eval, rtol=0, atol=1e-9)
    # a sample's density does not depend on the rest of its batch
    alone = torch.cat([model.log_prob(x[i : i + 1]) for i in range(6)])
    other = torch.cat([x[:2], logit_like(4, 784, seed=11)])
    assert torch.allclose(lp_eval, alone, rtol=0, atol=1e-9)
    assert torch.allclose(model.log_prob(other)[:2], lp_eval[:2], rtol=0, atol=1e-9)
    # (not vacuous: the rows that differ do get other densities)
    assert (model.log_prob(other)[2:] - lp_eval[2:]).abs().min().item() > 1.0


def test_default_parameter_count_near_paper():
    model = RealNVP()
    n = model.num_parameters()
    assert n == sum(p.numel() for p in model.parameters())
    assert abs(n / PAPER_PARAMETERS - 1) < 0.10
    assert model.num_parameters("stored") == n
    with pytest.raises(ValueError, match="kind"):
        model.num_parameters("dense")
    # more blocks or wider nets mean more parameters
    assert RealNVP(num_res_blocks=8).num_parameters() > n > RealNVP(mid_channels=32).num_parameters()


def test_constructor_kwargs_rebuild_from_json_spec():
    model = make(seed=5)
    spec = json.loads(json.dumps({"name": "realnvp", **SMALL}))
    rebuilt = build_model(spec).double()
    rebuilt.load_state_dict(model.state_dict())
    x = logit_like(2, 784, seed=12)
    assert torch.equal(rebuilt.log_prob(x), model.log_prob(x))
    assert not any("mask" in k for k in model.state_dict())  # masks are rebuilt, not stored


def test_few_adam_steps_train_every_parameter():
    torch.manual_seed(0)
    model = RealNVP(**SMALL)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = logit_like(8, 784, torch.float32, seed=13)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = -model.log_prob(x).mean() / 784
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, start[k])]
    assert unchanged == []


def test_sample_temperature():
    model = RealNVP(**SMALL)  # fresh: a permutation of the latent
    with torch.no_grad():
        s = model.sample(200, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert s.std().item() == pytest.approx(0.5, rel=0.02)


BAD_INPUTS = [
    (torch.zeros(2, 783), ValueError, "feature size 783"),
    (torch.zeros(2, 784, dtype=torch.int64), TypeError, "floating dtype"),
    (torch.full((2, 784), float("nan")), ValueError, "NaN"),
    (torch.zeros(2, 1, 28, 28), ValueError, "rank 4"),
    ([[0.0] * 784], TypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("method", ["forward", "inverse", "log_prob"])
@pytest.mark.parametrize("bad, exc, msg", BAD_INPUTS, ids=["size", "int", "nan", "image", "list"])
def test_bad_input_raises_with_message(method, bad, exc, msg):
    model = RealNVP(**TINY | dict(image_size=28))
    with pytest.raises(exc, match=msg):
        getattr(model, method)(bad)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(image_size=30, num_scales=3), "divisible"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(mid_channels=2.5), "mid_channels"),
        (dict(in_channels=True), "in_channels"),
    ],
)
def test_bad_configuration_raises(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        RealNVP(**dict(TINY, image_size=28) | kwargs)


@pytest.mark.parametrize(
    "kwargs, msg", [(dict(sample_shape=-1), "sample_shape"), (dict(sample_shape=2, temperature=0.0), "temperature")]
)
def test_bad_sample_arguments_raise(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        RealNVP(**TINY).sample(**kwargs)
