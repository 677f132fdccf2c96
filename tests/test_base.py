"""The transform base: row hooks behind one check at the boundary, and a core without import circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lunet.base
from lunet import LULinear, LUNet, Sequential, Transform

CORE = Path(lunet.base.__file__).parent


class Scale(Transform):
    """A contract-keeping transform of one's own: ``y = 2 x``, through the row hooks alone."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("factor", torch.tensor(2.0))

    def reference(self) -> torch.Tensor:
        return self.factor

    def forward_rows(self, x):
        return 2 * x, torch.full(x.shape[:1], self.features * 0.6931471805599453, dtype=x.dtype)

    def inverse_rows(self, y):
        return y / 2, torch.full(y.shape[:1], -self.features * 0.6931471805599453, dtype=y.dtype)


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)])
def test_a_transform_of_ones_own_gets_the_contract_from_two_row_hooks(leading):
    t = Scale(3)
    x = torch.randn(*leading, 3)
    y, logdet = t(x)
    assert y.shape == x.shape and logdet.shape == leading
    back, inverse_logdet = t.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logdet, -inverse_logdet)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        t(torch.randn(4, 2))
    with pytest.raises(TypeError, match="dtype"):
        t(torch.randn(4, 3, dtype=torch.float64))


def test_it_composes_with_lunets_parts_and_the_log_dets_add_up():
    torch.manual_seed(0)
    layer = LULinear(3)
    flow = Sequential(Scale(3), layer)
    x = torch.randn(6, 3)
    z, logdet = flow(x)
    torch.testing.assert_close(z, layer(2 * x)[0])
    torch.testing.assert_close(logdet, layer.log_abs_det().expand(6) + 3 * 0.6931471805599453)
    with pytest.raises(ValueError, match="LULinear takes 4 features, got 3"):
        Sequential(Scale(3), LULinear(4))(x)


class Shift(Transform):
    """``y = x + 1``: a row hook whose log-det, 0 for every row, is returned once as a 0-dim tensor."""

    features = 3

    def forward_rows(self, x):
        return x + 1, torch.zeros(())

    def inverse_rows(self, y):
        return y - 1, torch.zeros(())


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)])
def test_a_log_det_the_same_for_every_row_may_be_given_once(leading):
    torch.manual_seed(2)
    layer = LULinear(3)
    x = torch.randn(*leading, 3)
    for t, expected in ((Shift(), torch.zeros(leading)), (layer, layer.log_abs_det().expand(leading)),
                        (Sequential(Shift(), layer, Shift()), layer.log_abs_det().expand(leading)),
                        (Sequential(Scale(3), layer), layer.log_abs_det() + 3 * 0.6931471805599453)):
        y, logdet = t(x)
        assert logdet.shape == leading
        torch.testing.assert_close(logdet, expected.expand(leading))
        back, inverse_logdet = t.inverse(y)
        assert inverse_logdet.shape == leading
        torch.testing.assert_close(back, x)
        torch.testing.assert_close(inverse_logdet, -logdet)


def test_a_composition_checks_its_input_once(monkeypatch):
    calls = []
    original = lunet.base.check_features
    monkeypatch.setattr(lunet.base, "check_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    net = LUNet(4, 3)
    x = torch.randn(8, 4)
    z, _ = net(x)
    net.inverse(z)
    assert len(calls) == 2  # one per pass, at the boundary: not one per part


def test_set_factors_makes_the_layer_the_given_map_and_refuses_a_singular_u():
    torch.manual_seed(1)
    lower = torch.eye(4) + torch.randn(4, 4).tril(-1)
    upper = torch.randn(4, 4).triu(1) + torch.diag(torch.tensor([1.5, -0.5, 2.0, -3.0]))
    bias = torch.randn(4)
    for diag in ("raw", "exp"):
        layer = LULinear(4, diag=diag).set_factors(lower, upper, bias)
        torch.testing.assert_close(layer.matrix_l(), lower)
        torch.testing.assert_close(layer.matrix_u(), upper)
        torch.testing.assert_close(layer.bias.detach(), bias)
    with pytest.raises(ValueError, match="non-zero"):
        LULinear(4).set_factors(lower, upper.triu(1), bias)


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
