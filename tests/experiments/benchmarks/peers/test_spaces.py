"""The data every peer sees (lunet.experiments.benchmarks.peers.spaces): units, and the shared
preprocessing's Jacobian for images and vectors."""

import copy
import math

import pytest
import torch

from lunet import LUNet
from lunet.experiments.benchmarks.peers import ImageSpace, data_log_prob, images_from_pixels, vectors_from_splits
from lunet.experiments.benchmarks.peers.models import LUNetPeer, PeerModel
from lunet.experiments.data.mixture2d import GaussianMixture2D
from lunet.experiments.data.preprocess import LN2
from lunet.experiments.evaluation.evaluate import image_log_probs

pytestmark = pytest.mark.usefixtures("one_thread")


def _pixels(n: int, features: int, seed: int = 0) -> torch.Tensor:
    # smooth-ish images, so that the logits' spread differs between pixels
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 255, features)
    return (base + 60 * torch.randn(n, features, generator=g)).round().clamp(0, 255).to(torch.uint8)


def test_image_figure_is_lunets_bits_per_dim_with_the_shared_standardisation():
    """The protocol's bits/dim (shared Standardize in front of a flow without its own) equal lunet's
    evaluation of the same flow holding that standardisation itself, and the 256-level term is there."""
    features, seed = 12, 5
    pixels = _pixels(40, features)
    data = images_from_pixels("tiny", pixels[:20], pixels[20:30], pixels[30:])
    torch.manual_seed(0)
    own = LUNet(features, 2, init_scale=0.3)
    own.input_standardize.mean.copy_(data.space.standardize.mean)
    own.input_standardize.std.copy_(data.space.standardize.std)
    shared = copy.deepcopy(own)
    shared.input_standardize.mean.zero_()
    shared.input_standardize.std.fill_(1.0)

    lunet_log_p, _ = image_log_probs(own, pixels, data.space.pre, seed=seed)
    h, logdet = data.space.from_pixels(pixels, torch.Generator().manual_seed(seed))
    ours = data_log_prob(LUNetPeer(shared, "x"), (h, logdet.double()))
    torch.testing.assert_close(ours, lunet_log_p, rtol=0, atol=1e-3)
    mean, sem = data.figure(ours)
    by_hand = -ours / (features * LN2) + math.log2(256)
    assert mean == pytest.approx(float(by_hand.mean()), abs=1e-12)
    assert sem == pytest.approx(float(by_hand.std() / math.sqrt(len(by_hand))), rel=1e-9)
    # a flat density on [0, 1)^D scores exactly 8 bits/dim
    assert data.figure(torch.zeros(3))[0] == 8.0


def _brute_logdet(fn, rows: torch.Tensor) -> torch.Tensor:
    out = []
    for row in rows:
        jac = torch.autograd.functional.jacobian(lambda r: fn(r[None])[0], row)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("features", [1, 3, 5])
def test_image_preprocessing_jacobian_matches_autograd(features):
    space = ImageSpace(features).fit(_pixels(50, features, seed=features))
    assert not torch.allclose(space.standardize.std, torch.ones(features))  # its Jacobian is not trivially 0
    space.standardize.double()  # float64 for the finite comparison; the map is the same
    g = torch.Generator().manual_seed(1)
    y = torch.rand(4, features, generator=g, dtype=torch.float64) * 0.98 + 0.01
    y[0, 0] = 1e-7  # near the edges, where the logit is steep
    _, logdet = space.from_dequantised(y)
    torch.testing.assert_close(logdet, _brute_logdet(lambda r: space.from_dequantised(r)[0], y), rtol=1e-9, atol=1e-8)
    # from pixels: dequantise with the given noise, then the same map
    pixels = _pixels(4, features, seed=2)
    noise = torch.rand(4, features, generator=g)
    space.standardize.float()
    h_pix, ld_pix = space.from_pixels(pixels, noise=noise)
    h_y, ld_y = space.from_dequantised((pixels.float() + noise) / 256)
    torch.testing.assert_close((h_pix, ld_pix), (h_y, ld_y), rtol=1e-5, atol=1e-4)


def test_vector_preprocessing_jacobian_and_the_truths_kl_is_zero():
    mix = GaussianMixture2D()
    data = vectors_from_splits("mix", mix.sample(2000, seed=1) * 3 + 1, mix.sample(500, seed=2) * 3 + 1,
                               mix.sample(40000, seed=3) * 3 + 1, entropy=None)
    x = mix.sample(3, seed=4)
    _, logdet = data.space.from_raw(x)
    torch.testing.assert_close(logdet, _brute_logdet(lambda r: data.space.from_raw(r)[0], x))

    class Truth(PeerModel):
        """The mixture scaled by ``scale`` and shifted by ``shift``, seen in model space:
        log p_truth(x(h)) + log|det ∂x/∂h|."""

        def __init__(self, space, scale=1.0, shift=0.0):
            super().__init__()
            self.space, self.scale, self.shift = space, scale, shift

        def log_prob(self, h):
            x = self.space.to_data(h)
            return (mix.log_prob((x - self.shift) / self.scale) - 2 * math.log(self.scale)
                    + torch.log(self.space.standardize.std).sum())

    raw = [mix.sample(n, seed=s) for n, s in ((2000, 1), (500, 2), (40000, 3))]
    kl_data = vectors_from_splits("mix", *raw, entropy=mix.entropy(grid=600))
    kl, sem = kl_data.figure(data_log_prob(Truth(kl_data.space), kl_data.test))
    assert abs(kl) < 4 * sem + 2e-3, (kl, sem)  # the truth has KL 0 up to Monte-Carlo error
    nats = data.figure(data_log_prob(Truth(data.space, 3.0, 1.0), data.test))[0]
    # nats/dim of the truth scaled by 3: its entropy per dimension plus log 3
    assert nats == pytest.approx(mix.entropy(grid=600) / 2 + math.log(3), abs=0.02)
