"""Frozen affine maps (lunet.fast.affine): a frozen flow's products, split among the threads or not."""

import pytest
import torch


@pytest.mark.parametrize("dtype,width", [(torch.float32, 768), (torch.float64, 512), (torch.float32, 769)])
@pytest.mark.parametrize("rows", [1, 5, 127, 128])
@pytest.mark.parametrize("into_out", [False, True], ids=["new", "out"])
def test_frozen_affine_map_is_the_affine_map_split_or_not(dtype, width, rows, into_out, two_threads, monkeypatch):
    """Below SPLIT_BELOW_ROWS rows a matrix over SPLIT_MIN_BYTES is split by output
    columns (not at a prime width: nothing divides it); every form gives ``h W + b``."""
    from lunet.fast.affine import SPLIT_BELOW_ROWS, FrozenAffine, as_frozen_affine_weight

    split_calls = []
    baddbmm = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: split_calls.append(1) or baddbmm(*a, **k))
    gen = torch.Generator().manual_seed(rows)
    w64 = torch.randn(width, width, generator=gen, dtype=torch.float64) / width**0.5
    b64 = torch.randn(width, generator=gen, dtype=torch.float64)
    h64 = torch.randn(rows, width, generator=gen, dtype=torch.float64)
    out = torch.full((rows, width), float("nan"), dtype=dtype) if into_out else None
    layer = FrozenAffine(as_frozen_affine_weight(w64, dtype), b64.to(dtype))
    exact = h64.to(dtype).double() @ w64.to(dtype).double() + b64.to(dtype).double()
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    # twice: the second call reuses the views of the split made by the first
    for _ in range(2):
        split_calls.clear()
        with torch.no_grad():
            y = layer(h64.to(dtype), out=out)
        assert bool(split_calls) == (rows < SPLIT_BELOW_ROWS and width % 2 == 0)
        if into_out:
            assert y is out
        assert y.shape == (rows, width) and y.dtype == dtype
        assert (y.double() - exact).abs().max() < tol * exact.abs().max()


def test_frozen_affine_map_follows_the_thread_count(two_threads):
    """The split's views are kept between calls; a new thread count gives new shares
    (768 columns: 2 and 3 threads divide them), and every count the same map."""
    from lunet.fast.affine import FrozenAffine, as_frozen_affine_weight

    gen = torch.Generator().manual_seed(1)
    w64 = torch.randn(768, 768, generator=gen, dtype=torch.float64) / 768**0.5
    b64 = torch.randn(768, generator=gen, dtype=torch.float64)
    h64 = torch.randn(2, 768, generator=gen, dtype=torch.float64)
    layer = FrozenAffine(as_frozen_affine_weight(w64, torch.float32), b64.float())
    exact = h64.float().double() @ w64.float().double() + b64.float().double()
    shares = []
    for threads in (2, 3, 1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            y = layer(h64.float())
        shares.append(layer._split[0])
        assert (y.double() - exact).abs().max() < 1e-5 * exact.abs().max()
    assert shares == [2, 3, 3, 2]  # one thread adds no split and keeps the last views
