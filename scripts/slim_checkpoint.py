"""Copy a training checkpoint without its optimiser state, keeping only the best weights.

The copy loads with ``lunet.experiments.checkpoint.load_model`` (and so with ``lunet evaluate``
and ``lunet sample``) but cannot resume training. It is a quarter of the size:
for moving a trained model off a machine that is about to be given back.

    python scripts/slim_checkpoint.py RUN/checkpoint.pt SLIM.pt
"""

from __future__ import annotations

import sys

from lunet.experiments.checkpoint import load_checkpoint, save_checkpoint

KEPT = ("model_spec", "train_config", "epoch", "train_seconds", "extra", "best_val_log_prob")


def slim(src: str, dst: str) -> None:
    ckpt = load_checkpoint(src)
    best = ckpt.get("best_model") or ckpt["model"]
    out = {key: ckpt[key] for key in KEPT if key in ckpt}
    out.update(model=best, best_model=None, slim=True)
    save_checkpoint(out, dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    slim(sys.argv[1], sys.argv[2])
