"""The package's imports, across its modules: every module of the experiment side in one of its layers,
imports that run one way without a circle, the library alone without plotting or progress packages,
and the command line naming the extra it needs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lunet.base

CORE = Path(lunet.base.__file__).parent


def _imports(path: Path) -> set[str]:
    """The lunet modules a module imports, at its top or inside functions (not for type checking alone)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # before the walk below reaches them
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lunet"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lunet"))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# lunet's layers above the library, lowest first: a module may import from its own layer and the
# ones below it. The experiment side's sub-packages are layers of their own, in the order their
# work builds up; the experiment package itself (its lazy DensityEstimator) sits above them.
LAYERS = tuple(f"lunet.experiments.{part}" for part in (
    "config", "files", "data", "store", "plots", "training", "runs", "evaluation", "benchmarks", "sbi",
)) + ("lunet.experiments", "lunet.cli")


def _layer(module: str) -> int:
    """0 for the library (the core, fast/, baselines/), then 1 + the index of the longest entry of
    :data:`LAYERS` that is ``module`` or a package holding it."""
    found = [i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")]
    return 1 + max(found, key=lambda i: len(LAYERS[i])) if found else 0


def test_every_module_of_the_experiment_side_lies_in_one_of_its_layers():
    experiments = [m for m in map(_module_name, CORE.joinpath("experiments").rglob("*.py"))]
    stray = sorted(m for m in experiments if LAYERS[_layer(m) - 1] == "lunet.experiments" and m != "lunet.experiments")
    assert not stray, f"modules outside the experiment side's layers: {stray}"


def test_the_package_imports_run_one_way_without_a_circle():
    modules = {_module_name(p): p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts}
    graph = {name: {m for m in _imports(path) if m in modules and m not in ("lunet", name)}
             for name, path in modules.items()}
    for name, imported in graph.items():
        upward = sorted(m for m in imported if _layer(m) > _layer(name))
        assert not upward, f"{name} imports {upward} from a higher layer"
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, path + (name,))
        done.add(name)

    for name in graph:
        if not name.endswith("__init__"):
            visit(name, ())


def test_the_library_alone_imports_no_plotting_or_progress_package():
    # what lunet adds to the modules torch itself loads (some torch builds load tqdm on their own)
    code = ("import sys, torch; before = set(sys.modules); import lunet; f = lunet.LUNet(4, 2); "
            "f.log_prob(torch.randn(3, 4)); f.frozen().sample(2); f.distribution().sample(); "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & {'matplotlib', 'tqdm', 'PIL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_names_the_extra_it_needs(monkeypatch, capsys):
    import importlib.util

    from lunet.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real(name, *a))
    assert main(["train", "--dataset", "gmm2d", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "needs tqdm" in err and "pip install 'lunet[experiments]'" in err
    assert not Path("unused").exists()
