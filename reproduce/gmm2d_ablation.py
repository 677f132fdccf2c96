"""Ablations of the 2-D mixture recipe: test KL (nats) per configuration.

    python reproduce/gmm2d_ablation.py            # all rows, ~15 min on 2 cores
    python reproduce/gmm2d_ablation.py --only 0 1 # selected rows

Each row trains a fresh 2-D LU-Net for a fixed number of Adam steps on the
9,000 training points and reports KL = test NLL - mixture entropy. Single
runs: differences below ~0.1 nats are within seed-to-seed noise.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from lunet import LUNet
from lunet.experiments.data.mixture2d import GaussianMixture2D
from lunet.experiments.runs.gmm2d import make_splits

BASE = dict(blocks=12, alpha=0.1, steps=3000, batch=512, lr=1e-2, positive_signs=False, input_scale=1.0,
            learn_alpha=False)
ROWS = [
    ("all diag(U) signs positive", dict(positive_signs=True)),
    ("random signs on diag(U)", dict()),
    ("+ 6,000 steps", dict(steps=6000)),
    ("+ batch 1,024, lr 3e-2, 6,000 steps", dict(steps=6000, batch=1024, lr=3e-2)),
    ("slope a = 0.05, 6,000 steps", dict(steps=6000, alpha=0.05)),
    ("slope a = 0.3", dict(alpha=0.3)),
    ("learnable slope, batch 1,024, lr 3e-2, 6,000 steps", dict(steps=6000, batch=1024, lr=3e-2, learn_alpha=True)),
    ("16 blocks, 6,000 steps", dict(steps=6000, blocks=16)),
    ("input scaled x3 after standardising", dict(input_scale=3.0)),
]


def run(cfg: dict, seed: int = 0) -> float:
    torch.manual_seed(seed)
    data = make_splits(0)
    mix = GaussianMixture2D()
    net = LUNet(2, cfg["blocks"], alpha=cfg["alpha"], init_scale=1.0, learn_alpha=cfg["learn_alpha"])
    net.standardize(data["train"])
    with torch.no_grad():
        net.input_std.div_(cfg["input_scale"])
        net.blocks[-1].diag.sub_(math.log(cfg["input_scale"]))  # latent starts at unit scale again
        if cfg["positive_signs"]:
            for block in net.blocks:
                block.diag_sign.fill_(1.0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg["steps"]):
        idx = torch.randint(0, data["train"].shape[0], (cfg["batch"],), generator=gen)
        loss = -net.log_prob(data["train"][idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return -net.log_prob(data["test"]).mean().item() - mix.entropy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="*", help="row indices to run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| change | KL (nats) | seconds |\n| --- | --- | --- |")
    for i, (name, change) in enumerate(ROWS):
        if args.only and i not in args.only:
            continue
        start = time.perf_counter()
        kl = run({**BASE, **change}, seed=args.seed)
        print(f"| {name} | {kl:.3f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
