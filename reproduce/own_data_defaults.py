"""How the defaults of `lunet train --data` were chosen: LU-Net settings on a 3-D toy set.

    python reproduce/own_data_defaults.py        # about 2 minutes on one CPU thread

Data: x0, x2 ~ N(0, 1), x1 = x0² + N(0, 1) (entropy 3 · 1.419 = 4.257 nats, 1.419 nats/dim),
4,000 rows to train on (10 % of them validate), 2,000 test rows. Each setting trains 60 epochs
with a cosine schedule; printed: validation and test NLL in nats/dim, and the median and 99th
percentile over samples of each sample's largest absolute coordinate (the test rows': about 1.4 and 7).
"""

from __future__ import annotations

import math
import tempfile
import time

import torch

from lunet.experiments.settings import TrainConfig, vector_lunet_spec
from lunet.experiments.vector_runs import evaluate_vectors, sample_vectors, train_vectors

SETTINGS = [  # blocks, learned slope, init_scale, lr, batch, warm-up, clip
    (8, False, 0.1, 1e-3, 256, 200, 10.0),  # the image recipe
    (4, False, 0.1, 1e-3, 256, 200, 10.0),
    (8, True, 0.1, 1e-3, 256, 200, 10.0),
    (8, True, 1.0, 1e-2, 256, 0, None),  # the defaults of --data
    (4, True, 1.0, 1e-2, 256, 0, None),
    (8, True, 1.0, 3e-2, 1024, 0, None),  # the 2-D mixture's step
]


def toy(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 1] += x[:, 0] ** 2
    return x


def main() -> None:
    torch.set_num_threads(1)
    train, test = toy(4000, 0), toy(2000, 1)
    quantiles = torch.tensor([0.5, 0.99], dtype=torch.float64)
    print(f"data: test sample max |x| median/99%: {torch.quantile(test.abs().max(1).values, quantiles).tolist()}; "
          f"entropy {0.5 * math.log(2 * math.pi * math.e):.3f} nats/dim")
    print("blocks learned init lr     batch | val    test   | samples max|x| median, 99% | seconds")
    for blocks, learned, scale, lr, batch, warmup, clip in SETTINGS:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(epochs=60, batch_size=batch, lr=lr, warmup_steps=warmup, grad_clip=clip)
            spec = vector_lunet_spec(3, blocks, learn_alpha=learned, init_scale=scale)
            _, summary = train_vectors(train, out, config, model_spec=spec, progress=False)
            nll = evaluate_vectors(out, test)["nll_nats_per_dim"]
            spread = torch.quantile(sample_vectors(out, 2000).abs().max(1).values, quantiles).tolist()
        print(f"{blocks:>6} {str(learned):>7} {scale:>4} {lr:<6g} {batch:>5} | {summary['val_nll_nats_per_dim']:.3f}  "
              f"{nll:.3f}  | {spread[0]:>10.3g} {spread[1]:>12.3g}     | {time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
