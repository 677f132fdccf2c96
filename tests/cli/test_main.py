"""The ``lunet`` command (lunet.cli, ``python -m lunet.cli``): its commands, help and version,
answered without loading torch."""

import subprocess
import sys

from lunet.cli import main


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "lunet.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "evaluate", "sample", "interpolate", "agreement"):
        assert command in out.stdout


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
