"""The peers benchmark's protocol: its data sets, budgets, schedules and the settings every model shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["SCHEMA", "DATASETS", "DEFAULT_BUDGETS", "QUICK_BUDGETS", "QUICK_DATASETS", "FULL_IMAGE_ROWS",
           "QUICK_IMAGE_ROWS", "QUICK_GMM2D_TEST", "BREAST_CANCER_DROPPED", "LOG", "SCHEDULES", "FORMS",
           "Protocol", "family"]

SCHEMA = "lunet-peers/1"


DATASETS = ("mnist", "fashion-mnist", "gmm2d", "breast-cancer")


DEFAULT_BUDGETS = {"images": [60.0, 300.0, 1200.0], "vectors": [10.0, 30.0, 60.0]}


QUICK_BUDGETS = {"images": [5.0, 15.0], "vectors": [2.0, 5.0]}


QUICK_DATASETS = ("mnist", "gmm2d", "breast-cancer")


# rows of the image splits: (train, validation, test); None = all
FULL_IMAGE_ROWS = (None, 5000, None)


QUICK_IMAGE_ROWS = (10000, 500, 500)


QUICK_GMM2D_TEST = 10000


# fixed seeds of the data side, apart from the run's seed, so that every run scores the same tensors
FIT_SEED, VAL_SEED, TEST_SEED, SPLIT_SEED = 101, 102, 103, 0


# breast cancer's six concavity features hold exact zeros in the same 13 rows (an atom)
BREAST_CANCER_DROPPED = ("mean concavity", "mean concave points", "concavity error", "concave points error",
                         "worst concavity", "worst concave points")


LOG = Callable[[str], None]


SCHEDULES = ("constant", "cosine")


# how the tables name each form of the benchmark
FORMS = {"constant": "constant-rate form: one run per model at one rate, marked at each budget",
         "cosine": "scheduled form: one run per model and budget, the rate falling on a cosine to zero at the "
                   "budget's last training second"}


@dataclass
class Protocol:
    """What is the same for every model. ``eval_first`` is the interval between validations as a
    fraction of the smallest budget; later ones come every ``eval_growth`` × the training time so far."""

    lr: float = 1e-3
    batch_size: int = 256
    grad_clip: Optional[float] = 10.0
    warmup_steps: int = 0  # the rate rises linearly to ``lr`` over this many steps, for every model alike
    # "constant": one run to the largest budget at one rate; "cosine": one run per budget, the rate
    # falling to zero at its last training second (after the warm-up), the same rule for every model
    schedule: str = "constant"
    seed: int = 0
    eval_first: float = 1 / 6
    eval_growth: float = 0.25
    eval_elements: int = 784_000  # numbers per evaluation batch: 1,000 images, or more rows of narrower vectors
    density_batch: int = 1000
    speed_repeats: int = 3
    sample_cap_s: float = 120.0
    memory_steps: int = 2
    measure_memory: bool = True
    grid_samples: int = 10
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def family(name: str) -> str:
    """``"images"`` or ``"vectors"``: which list of budgets a data set trains under."""
    return "images" if name in ("mnist", "fashion-mnist") else "vectors"
