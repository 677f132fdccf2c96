"""LU-Net beside the flows users pick instead (zuko's MAF, RealNVP and NSF), under one protocol.

Every model sees the same tensors: images are dequantised, mapped to logits
(lunet's :class:`~lunet.experiments.data.preprocess.ImagePreprocessor`) and standardised
by a :class:`~lunet.Standardize` fitted once on the training split; vectors are
standardised the same way. The Jacobian of that shared map is added to every
model's ``log_prob``, so each figure is the likelihood of the data: bits/dim of
the dequantised images (lunet's :func:`~lunet.experiments.data.preprocess.bits_per_dim`),
nats/dim of raw vectors, KL(truth || model) in nats for the 2-D mixture.

Training: Adam, one learning rate and batch size, the same gradient clipping,
the same batch order and noise (one seed), the clock running only during
training steps. In the constant-rate form each model trains once, for the
largest wall-clock budget, at one rate; in the scheduled form it trains once
per budget, from the same start, its rate falling on a cosine to zero at that
budget's last training second: the best it reaches when it knows its time.
Validation runs at intervals with the clock paused; at each budget mark the
test figure of the best-validation weights so far is reported. Then parameters, peak training
memory, density and sampling speed. Definitions: ``docs/peers.md``.
"""

from lunet.experiments.benchmarks.peers.protocol import (
    BREAST_CANCER_DROPPED,
    DATASETS,
    DEFAULT_BUDGETS,
    FORMS,
    FULL_IMAGE_ROWS,
    LOG,
    QUICK_BUDGETS,
    QUICK_DATASETS,
    QUICK_GMM2D_TEST,
    QUICK_IMAGE_ROWS,
    SCHEDULES,
    SCHEMA,
    Protocol,
    family,
)
from lunet.experiments.benchmarks.peers.report import draw_figures, format_params, markdown_tables
from lunet.experiments.benchmarks.peers.run import (
    check_outputs,
    combine_results,
    machine_info,
    missing_extras,
    run_peers,
    validate_results,
)
from lunet.experiments.benchmarks.peers.spaces import (
    ImageSpace,
    PeerData,
    VectorSpace,
    images_from_pixels,
    load,
    load_breast_cancer,
    load_gmm2d,
    load_images,
    vectors_from_splits,
)
from lunet.experiments.benchmarks.peers.speed import grid_samples, measure_speed, memory_steps, peak_training_memory_mib
from lunet.experiments.benchmarks.peers.training import (
    BestKeeper,
    data_log_prob,
    optimise_step,
    train_with_budgets,
    warm_up,
)

__all__ = [
    "BREAST_CANCER_DROPPED", "DATASETS", "DEFAULT_BUDGETS", "FORMS", "FULL_IMAGE_ROWS", "LOG", "Protocol",
    "QUICK_BUDGETS", "QUICK_DATASETS", "QUICK_GMM2D_TEST", "QUICK_IMAGE_ROWS", "SCHEDULES", "SCHEMA", "family",
    "ImageSpace", "PeerData", "VectorSpace", "images_from_pixels", "load", "load_breast_cancer", "load_gmm2d",
    "load_images", "vectors_from_splits", "BestKeeper", "data_log_prob", "optimise_step", "train_with_budgets",
    "warm_up", "grid_samples", "measure_speed", "memory_steps", "peak_training_memory_mib", "check_outputs",
    "combine_results", "machine_info", "missing_extras", "run_peers", "validate_results", "draw_figures",
    "format_params", "markdown_tables",
]
