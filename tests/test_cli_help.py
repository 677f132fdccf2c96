"""The command line's help and version: answered without loading torch, defaults shown."""

import subprocess
import sys

import pytest

from lunet.cli import main


def test_help_and_version_do_not_load_torch():
    code = ("import sys; from lunet.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['train', '--dataset', 'mnist', '--help'], ['--version']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_version_names_the_package_version(capsys):
    import lunet

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lunet {lunet.__version__}"


def _expected():
    from lunet.experiments.config.presets import GMM2DSettings, paper_lunet_spec, vector_lunet_spec
    from lunet.experiments.config.training import VECTOR_STEPS, default_train_config

    small, images, own = default_train_config("gmm2d"), default_train_config("mnist"), default_train_config("vectors")
    assert images.lr == own.lr != small.lr  # the texts below group so
    assert paper_lunet_spec()["num_blocks"] == vector_lunet_spec(1)["num_blocks"] != GMM2DSettings().num_blocks
    return [
        ("--epochs", f"(default {small.epochs} for gmm2d, {images.epochs} for images, about {VECTOR_STEPS:,} steps' "
                     f"worth for --data)"),
        ("--lr", f"(default {small.lr:g} for gmm2d, {images.lr:g} for images and --data)"),
        ("--blocks", f"(default {GMM2DSettings().num_blocks} for gmm2d, {paper_lunet_spec()['num_blocks']} for images "
                     f"and --data)"),
        ("--patience", "(default none for gmm2d and images, 10 for --data)"),
        ("--limit", "per class with --per-class"),
    ]


@pytest.mark.parametrize("option, shown", _expected())
def test_train_help_shows_each_default_per_data_set(capsys, option, shown):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert option in text and shown in text


def test_each_kind_of_run_has_its_own_options(capsys):
    kinds = {("--dataset", "gmm2d"): ("--starts",), ("--dataset", "mnist"): ("--lam", "--per-class", "--class"),
             ("--data", "x.csv"): ("--val-fraction", "--data-init")}
    others = {option for shown in kinds.values() for option in shown} - {"--data-init"}
    for chosen, shown in kinds.items():
        assert main(["train", *chosen, "--help"]) == 0
        text = capsys.readouterr().out
        assert all(option in text for option in shown), chosen
        assert not [option for option in others - set(shown) if f"{option} " in text], chosen

