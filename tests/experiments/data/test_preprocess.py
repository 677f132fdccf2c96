"""Dequantisation, the logit transform and both bits-per-dimension conventions."""

import math

import pytest
import torch

from lunet.experiments.data.preprocess import (
    ImagePreprocessor,
    bits_per_dim,
    dequantize,
    inverse_logit,
    logit_transform,
    paper_bits_per_pixel,
)
from lunet.latent import standard_normal_log_prob

LAM = 1e-6


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixels(batch: int = 200, dims: int = 784, seed: int = 0) -> torch.Tensor:
    x = torch.randint(0, 256, (batch, dims), generator=seeded(seed), dtype=torch.uint8)
    x[0, :2] = torch.tensor([0, 255], dtype=torch.uint8)  # both ends always present
    return x


# --- dequantisation --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_range_levels_and_seed(dtype):
    x = pixels()
    y = dequantize(x, seeded(1), dtype=dtype)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) < 1.0
    assert torch.equal(torch.floor(256 * y).to(torch.uint8), x)
    noise = 256 * y.double() - x.double()
    assert abs(float(noise.mean()) - 0.5) < 0.005  # U[0, 1): mean 1/2, sd of the mean 7e-4
    assert torch.equal(y, dequantize(x, seeded(1), dtype=dtype))
    assert not torch.equal(y, dequantize(x, seeded(2), dtype=dtype))


def test_dequantize_top_level_stays_below_one_in_float32():
    # In float32, 255 + u rounds up to 256 for u > 1 - 2^-17; this draw holds such cases.
    x = torch.full((2000, 1000), 255, dtype=torch.uint8)
    raw = 255 + torch.rand(x.shape, generator=seeded(0))
    assert int((raw >= 256).sum()) > 0, "the draw no longer exercises the rounding case"
    y = dequantize(x, seeded(0))
    assert float(y.max()) < 1.0
    assert bool((torch.floor(256 * y) == 255).all())


def test_dequantize_accepts_any_integer_valued_input():
    x = pixels(batch=4, dims=10)
    expected = dequantize(x, seeded(3))
    for other in (x.long(), x.to(torch.int16), x.double(), x.float()):
        assert torch.equal(dequantize(other, seeded(3)), expected)


def test_dequantize_rejects_bad_input():
    with pytest.raises(ValueError, match=r"integer values 0\.\.255; 1 are not, e.g. 3.5"):
        dequantize(torch.tensor([[3.5, 4.0]]))
    with pytest.raises(ValueError, match="already scaled"):
        dequantize(torch.tensor([[0.5, 0.25]]))
    with pytest.raises(ValueError, match="integer values"):
        dequantize(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match=r"must lie in 0\.\.255; 1 do not \(min -1, max 3\)"):
        dequantize(torch.tensor([[-1, 3]], dtype=torch.int16))
    with pytest.raises(ValueError, match=r"must lie in 0\.\.255; 1 do not"):
        dequantize(torch.tensor([[256.0, 3.0]]))
    with pytest.raises(ValueError, match=r"shape \(batch, dims\), got rank 1"):
        dequantize(torch.zeros(784, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"shape \(batch, dims\), got rank 3"):
        dequantize(torch.zeros(2, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        dequantize(torch.zeros(2, 3, dtype=torch.uint8), dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="torch.Tensor"):
        dequantize([[1, 2]])


# 7 full batches of 64 and a last one of 52 (the pixels of the training steps' tests)
PIXELS = torch.randint(0, 256, (550, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_dequantisation_with_given_noise_equals_the_generators_draw():
    gen = torch.Generator().manual_seed(5)
    drawn = dequantize(PIXELS, generator=gen)
    noise = torch.rand(PIXELS.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(dequantize(PIXELS, noise=noise), drawn)
    with pytest.raises(ValueError, match=r"noise must match the pixels: shape \(550, 16\), torch.float32"):
        dequantize(PIXELS, noise=noise[:10])
    with pytest.raises(ValueError, match="noise must match"):
        dequantize(PIXELS, noise=noise.double())


# --- logit transform -----------------------------------------------------------------


def test_round_trip_recovers_integers_exactly_in_float64():
    x = pixels(batch=500)
    y = dequantize(x, seeded(4), dtype=torch.float64)
    l, _ = logit_transform(y, LAM)
    assert bool(torch.isfinite(l).all())
    back = inverse_logit(l, LAM)
    assert torch.equal(torch.floor(256 * back).to(torch.uint8), x)
    assert float((back - y).abs().max()) < 1e-12

    pre = ImagePreprocessor(lam=LAM)
    l2, _ = pre.to_model_space(x, seeded(4), dtype=torch.float64)
    assert torch.equal(l2, l)
    assert torch.equal(torch.floor(256 * pre.to_images(l2)).to(torch.uint8), x)


def test_float32_round_trip_and_accuracy_near_one():
    # Near y = 1, 1 - s must not be formed by cancellation: compare with float64.
    top = 1.0 - 2.0**-24  # the largest float32 below 1
    y32 = torch.tensor([[0.0, 1e-7, 0.5, 1.0 - 1e-6, top, 1.0]], dtype=torch.float32)
    l32, logdet32 = logit_transform(y32, LAM)
    l64, logdet64 = logit_transform(y32.double(), LAM)
    assert bool(torch.isfinite(l32).all())
    assert float((l32.double() - l64).abs().max()) < 1e-5
    assert abs(float(logdet32[0]) - float(logdet64[0])) < 1e-4 * abs(float(logdet64[0]))
    assert float((inverse_logit(l32, LAM) - y32).abs().max()) < 1e-6

    x = pixels(batch=50)
    y = dequantize(x, seeded(5))
    back = inverse_logit(logit_transform(y, LAM)[0], LAM)
    assert float((back - y).abs().max()) < 1e-6


def test_logit_values_at_the_ends():
    y = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    l, logdet = logit_transform(y, LAM)
    end = math.log(LAM / (1 - LAM))
    torch.testing.assert_close(l, torch.tensor([[end, 0.0, -end]], dtype=torch.float64), rtol=1e-14, atol=1e-14)
    c = 1 - 2 * LAM
    by_hand = 2 * math.log(c / (LAM * (1 - LAM))) + math.log(c / 0.25)
    assert math.isclose(float(logdet[0]), by_hand, rel_tol=1e-13)


def test_logit_logdet_matches_autograd_jacobian():
    y = torch.rand(3, 5, generator=seeded(6), dtype=torch.float64)
    y[0, 0], y[1, 1] = 0.0, 1.0 - 1e-9  # near-saturated ends too
    for lam in (LAM, 0.05):
        _, logdet = logit_transform(y, lam)
        assert logdet.shape == (3,)
        for b in range(3):
            jac = torch.autograd.functional.jacobian(lambda row: logit_transform(row[None], lam)[0][0], y[b])
            sign, logabsdet = torch.linalg.slogdet(jac)
            assert sign.item() == 1.0
            assert math.isclose(float(logdet[b]), float(logabsdet), rel_tol=1e-10, abs_tol=1e-10)


def test_logit_rejects_bad_input():
    y = torch.full((2, 3), 0.5)
    for lam in (0, 0.5, -1e-3, 0.7, True, "1e-6"):
        with pytest.raises(ValueError, match="0 < lam < 0.5"):
            logit_transform(y, lam)
        with pytest.raises(ValueError, match="0 < lam < 0.5"):
            inverse_logit(y, lam)
        with pytest.raises(ValueError, match="0 < lam < 0.5"):
            ImagePreprocessor(lam=lam)
    for bad in (1.5, -0.1, float("nan")):
        z = y.clone()
        z[1, 2] = bad
        with pytest.raises(ValueError, match=r"y must lie in \[0, 1\]; 1 value"):
            logit_transform(z)
    with pytest.raises(ValueError, match="got rank 1"):
        logit_transform(torch.full((3,), 0.5))
    with pytest.raises(TypeError, match="floating dtype"):
        logit_transform(torch.zeros(2, 3, dtype=torch.uint8))


# --- bits per dimension ---------------------------------------------------------------


def change_of_variables_log_prob(l: torch.Tensor, log_prob_y) -> torch.Tensor:
    """``log p_flow(l)`` for a density given in y-space, with dy/dl from autograd.

    Independent of ``logit_transform``'s own log-determinant, so adding that
    log-determinant back must give ``log p(y)`` exactly when its sign and
    value are right.
    """
    l = l.detach().requires_grad_(True)
    y = inverse_logit(l, LAM)
    (dy_dl,) = torch.autograd.grad(y.sum(), l)  # elementwise map: the Jacobian is diagonal
    return (log_prob_y(y) + torch.log(dy_dl).sum(dim=1)).detach()


def test_uniform_model_scores_exactly_eight():
    for d in (1, 3, 784):
        assert bits_per_dim(torch.zeros(4, dtype=torch.float64), d).tolist() == [8.0] * 4
        assert bits_per_dim(torch.zeros(4, dtype=torch.float32), d).tolist() == [8.0] * 4
    # Through the pipeline: a flow that is the uniform density pushed to logit space.
    pre = ImagePreprocessor(lam=LAM, num_dims=6)
    l, logdet = pre.to_model_space(pixels(batch=8, dims=6), seeded(7), dtype=torch.float64)
    log_prob_y = change_of_variables_log_prob(l, lambda y: torch.zeros(y.shape[0], dtype=y.dtype)) + logdet
    torch.testing.assert_close(bits_per_dim(log_prob_y, 6), torch.full((8,), 8.0, dtype=torch.float64))


def test_gaussian_model_bits_per_dim_by_hand():
    # y ~ N(mu, sigma^2 I) with D = 4, sigma = 0.1, at y - mu = sigma * (1, -2, 0.5, 0):
    # log p(y) = -|z|^2 / 2 - D log sigma - D/2 log(2 pi), |z|^2 = 5.25.
    d, sigma = 4, 0.1
    log_p = -5.25 / 2 - d * math.log(sigma) - d / 2 * math.log(2 * math.pi)
    by_hand = (-log_p + d * math.log(256)) / (d * math.log(2))
    assert math.isclose(by_hand, 6.950589, abs_tol=1e-6)  # the same sum, worked out on paper
    got = bits_per_dim(torch.tensor([log_p], dtype=torch.float64), d)
    assert math.isclose(float(got[0]), by_hand, rel_tol=1e-14)

    # The same model as a flow in logit space: log p_flow(l) + logdet must give log p(y).
    mu = torch.full((d,), 0.5, dtype=torch.float64)
    y = (mu + sigma * torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64))[None]

    def gaussian(v):
        z = (v - mu) / sigma
        return -0.5 * z.pow(2).sum(dim=1) - d * math.log(sigma) - d / 2 * math.log(2 * math.pi)

    l, logdet = logit_transform(y, LAM)
    log_prob_y = change_of_variables_log_prob(l, gaussian) + logdet
    assert math.isclose(float(bits_per_dim(log_prob_y, d)[0]), by_hand, rel_tol=1e-10)


def test_paper_convention():
    d = 784
    lp = torch.tensor([-1500.0, -300.0, 0.0, 250.0], dtype=torch.float64)
    expected = [-v / (d * math.log(2)) - 0.5 for v in lp.tolist()]
    torch.testing.assert_close(paper_bits_per_pixel(lp, d), torch.tensor(expected, dtype=torch.float64))

    # The 0.5 is the authors' constant: a standard normal in logit space scored
    # with 1/2 log(pi) in place of 1/2 log(2 pi), in bits per dimension.
    l = torch.randn(5, 8, generator=seeded(8), dtype=torch.float64)
    authors_nll = 0.5 * l.pow(2).sum(dim=1) + 8 / 2 * math.log(math.pi)
    torch.testing.assert_close(paper_bits_per_pixel(standard_normal_log_prob(l), 8), authors_nll / (8 * math.log(2)))


def test_bits_validation():
    for fn in (bits_per_dim, paper_bits_per_pixel):
        for d in (0, -3, 2.0):
            with pytest.raises(ValueError, match="num_dims must be a positive integer"):
                fn(torch.zeros(2), d)
        with pytest.raises(TypeError, match="torch.Tensor"):
            fn(0.0, 784)


# --- ImagePreprocessor ---------------------------------------------------------------


def test_image_preprocessor():
    pre = ImagePreprocessor()
    assert pre.lam == 1e-6 and pre.num_dims == 784
    assert repr(pre) == "ImagePreprocessor(lam=1e-06, num_dims=784)"
    x = pixels(batch=16)
    l, logdet = pre.to_model_space(x, seeded(9))
    assert l.shape == (16, 784) and l.dtype == torch.float32 and logdet.shape == (16,)
    ref_l, ref_logdet = logit_transform(dequantize(x, seeded(9)), 1e-6)
    assert torch.equal(l, ref_l) and torch.equal(logdet, ref_logdet)

    images = pre.to_images(torch.tensor([[-math.inf, -50.0, 0.0, 50.0, math.inf]]))
    assert images.tolist() == [[0.0, 0.0, 0.5, 1.0, 1.0]]
    assert float((pre.to_images(l) - x / 256).abs().max()) <= 1 / 256 + 1e-6

    with pytest.raises(ValueError, match=r"shape \(batch, 784\), got \(16, 100\)"):
        pre.to_model_space(x[:, :100])
    with pytest.raises(ValueError, match="num_dims must be a positive integer"):
        ImagePreprocessor(num_dims=0)
