"""The guide's picture of p(x | c): one conditional LU-Net of a 2-D density whose shape follows c.

    python reproduce/conditional_density.py                 # writes docs/figures/conditional-density.png

The data: c ~ U[-1, 1]; given c, an elongated Gaussian (spreads 1 and 0.2) turned by the angle
c π / 2 and centred on the parabola (1.5 c, 1.5 c² − 0.5). The run is
``train_vectors(x, out, context=c)`` with the defaults of ``lunet train --data X --context C``;
the script prints its validation and test NLL beside the conditional Gaussian's (whose mean is
linear in c and whose covariance is one for every c) and draws p(x | c) for five c.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lunet.experiments.plots import log_density_grid, plot_density_2d
from lunet.experiments.runs.vector_run import evaluate_vectors, load_vector_run
from lunet.experiments.runs.vectors import train_vectors

ROOT = Path(__file__).resolve().parents[1]
CONTEXTS = (-1.0, -0.5, 0.0, 0.5, 1.0)
BOX = (-3.0, 3.0, -2.5, 2.5)


def rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows (n, 2) and their contexts (n, 1), float64, drawn from ``seed``: an elongated
    Gaussian (spreads 1 and 0.2) turned by the angle ``c π / 2``, centred at ``(1.5 c, 1.5 c² − 0.5)``."""
    gen = torch.Generator().manual_seed(seed)
    c = 2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1
    e = torch.randn(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.2], dtype=torch.float64)
    angle = c[:, 0] * torch.pi / 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    turned = torch.stack([cos * e[:, 0] - sin * e[:, 1], sin * e[:, 0] + cos * e[:, 1]], 1)
    return turned + torch.cat([1.5 * c, 1.5 * c**2 - 0.5], 1), c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "conditional-density.png")
    parser.add_argument("--rows", type=int, default=4000, help="training rows (default 4000)")
    args = parser.parse_args()
    x, c = rows(args.rows, 0)
    test_x, test_c = rows(2000, 1)
    with tempfile.TemporaryDirectory(prefix="lunet-conditional-") as folder:
        run_dir = Path(folder) / "run"
        _, summary = train_vectors(x, run_dir, context=c, progress=False)
        print(summary["comparison"], f"({summary['epochs']} epochs, {summary['train_seconds']:.0f} s training)")
        test = evaluate_vectors(run_dir, test_x, context=test_c)
        print(test["comparison"])
        model = load_vector_run(run_dir).model
    dtype = next(model.parameters()).dtype
    panels = [(f"c = {value:g}", log_density_grid(
        lambda pts, v=value: model.log_prob(pts.to(dtype), torch.tensor([v], dtype=dtype)), BOX, 160))
        for value in CONTEXTS]
    title = "one conditional LU-Net: p(x | c) for five contexts (a Gaussian turned by c π/2, centred on a parabola)"
    print(f"wrote {plot_density_2d(x, panels, BOX, args.out, title=title)}")


if __name__ == "__main__":
    main()
