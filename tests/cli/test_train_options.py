"""The options of ``lunet train`` (lunet.cli.train_options): the default of each per kind of run,
as the help shows it."""

import pytest

from lunet.cli import main

# -- the defaults the help shows, per kind of run ------------------------------------------------


def _expected():
    from lunet.experiments.config.presets import DEEP_VECTOR_ROWS, GMM2DSettings, paper_lunet_spec, vector_lunet_spec
    from lunet.experiments.config.training import VECTOR_STEPS, default_train_config

    small, images, own = default_train_config("gmm2d"), default_train_config("mnist"), default_train_config("vectors")
    assert images.lr == own.lr != small.lr  # the texts below group so
    assert paper_lunet_spec()["num_blocks"] == vector_lunet_spec(1)["num_blocks"] != GMM2DSettings().num_blocks
    return [
        ("--epochs", f"(default {small.epochs} for gmm2d, {images.epochs} for images, about {VECTOR_STEPS:,} steps' "
                     f"worth for --data)"),
        ("--lr", f"(default {small.lr:g} for gmm2d, {images.lr:g} for images and --data)"),
        ("--blocks", f"(default {GMM2DSettings().num_blocks} for gmm2d, {paper_lunet_spec()['num_blocks']} for images, "
                     f"{vector_lunet_spec(1)['num_blocks']} (8 from {DEEP_VECTOR_ROWS} rows without --context) "
                     f"for --data)"),
        ("--patience", "(default none for gmm2d and images, 10 for --data)"),
        ("--limit", "per class with --per-class"),
    ]


@pytest.mark.parametrize("option, shown", _expected())
def test_train_help_shows_each_default_per_data_set(capsys, option, shown):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert option in text and shown in text
