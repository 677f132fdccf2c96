"""One protocol for every posterior estimator on the SBI benchmark's tasks (docs/sbi.md).

For each (task, simulation budget, estimator): the same simulations (seeded by task and budget),
sbi's ``NPE`` with its own training loop and stopping rule (batch 200, learning rate 5e-4, 10 %
validation, stop after 20 epochs without improvement), the same torch seed; then, on each of the
task's ten fixed observations, 10,000 posterior draws (timed), their C2ST against the reference
posterior's 10,000, and the posterior log-density of the true parameters. Needs sbi (``lunet[sbi]``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from lunet.experiments.sbi.c2st import c2st
from lunet.experiments.sbi.tasks import Task, get_task

__all__ = ["ESTIMATORS", "TASK_NAMES", "MIN_ACCEPTANCE", "FIGURE_DIMS", "Protocol", "density_estimator", "simulations",
           "references", "check_reference", "train_estimator", "evaluate", "run_benchmark"]

# "lunet": the conditional LU-Net with leaky-softplus activations; "lunet_spline": with splines whose
# knots the context gives (lunet_nn(activation="spline")); the others are sbi's own names
ESTIMATORS = ("lunet", "lunet_spline", "zuko_nsf", "zuko_maf", "maf")
TASK_NAMES = ("gaussian_linear", "gaussian_mixture", "two_moons", "slcp")
# two coordinates of each task drawn in the figure
# below this share of draws inside a bounded prior's box, an estimator counts as failed on the observation
MIN_ACCEPTANCE = 0.01
FIGURE_DIMS = {"gaussian_linear": (0, 1), "gaussian_mixture": (0, 1), "two_moons": (0, 1), "slcp": (2, 3)}


@dataclass
class Protocol:
    """What every run shares. ``max_epochs`` caps sbi's loop (``None``: its own stopping rule alone)."""

    observations: int = 10
    posterior_samples: int = 10_000
    seed: int = 0
    max_epochs: Optional[int] = None
    lunet_blocks: int = 8
    lunet_hidden: int = 64
    c2st_early_stopping: bool = True
    figure_samples: int = 500
    mcmc_steps: tuple[int, int] = (2000, 1000)
    extra: dict[str, Any] = field(default_factory=dict)


def density_estimator(name: str, protocol: Protocol) -> str | Callable:
    """What ``NPE(density_estimator=...)`` gets for estimator ``name``: sbi's own names as they are,
    LU-Net's builder for ``"lunet"`` and ``"lunet_spline"``."""
    if name in ("lunet", "lunet_spline"):
        from lunet.sbi import lunet_nn

        activation = "spline" if name == "lunet_spline" else "leaky_softplus"
        return lunet_nn(num_blocks=protocol.lunet_blocks, hidden=protocol.lunet_hidden, activation=activation)
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return name


def simulations(task: Task, budget: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (task, budget)'s training pairs, the same for every estimator: theta (budget, theta_dim), x."""
    generator = torch.Generator().manual_seed(task.seed * 1_000_003 + budget * 7 + seed)
    theta = task.sample_prior(budget, generator)
    return theta, task.simulate(theta, generator)


def references(task: Task, protocol: Protocol, x_o: torch.Tensor) -> list[torch.Tensor]:
    """Reference posterior draws (posterior_samples, theta_dim) for each observation in ``x_o``."""
    out = []
    for i, x in enumerate(x_o):
        g = torch.Generator().manual_seed(10_000 + i)
        if task.name == "slcp":
            from lunet.experiments.sbi.mcmc import sign_symmetric_metropolis

            burn, run = protocol.mcmc_steps
            out.append(sign_symmetric_metropolis(task, x, protocol.posterior_samples, g, symmetric=(2, 3),
                                                 burn_in=burn, run=run))
        else:
            out.append(task.reference_posterior(x, protocol.posterior_samples, g))
    return out


def check_reference(task: Task, protocol: Protocol, x_o: torch.Tensor, refs: Sequence[torch.Tensor]) -> list[float]:
    """C2ST between each observation's reference and a second, independent reference draw (~0.5)."""
    scores = []
    for i, (x, ref) in enumerate(zip(x_o, refs)):
        g = torch.Generator().manual_seed(20_000 + i)
        if task.name == "slcp":
            from lunet.experiments.sbi.mcmc import sign_symmetric_metropolis

            burn, run = protocol.mcmc_steps
            other = sign_symmetric_metropolis(task, x, protocol.posterior_samples, g, symmetric=(2, 3),
                                              burn_in=burn, run=run)
        else:
            other = task.reference_posterior(x, protocol.posterior_samples, g)
        scores.append(c2st(ref, other, early_stopping=protocol.c2st_early_stopping))
    return scores


def train_estimator(task: Task, budget: int, estimator: str | Callable,
                    protocol: Protocol, train_args: Optional[dict[str, Any]] = None) -> tuple[Any, dict[str, Any]]:
    """sbi's NPE trained on the (task, budget)'s simulations: the posterior and the training record.
    ``estimator``: a name of :data:`ESTIMATORS`, or a builder as sbi takes it (``lunet_nn(...)``);
    ``train_args``: arguments of sbi's ``NPE.train`` in place of its defaults (``learning_rate``, ...)."""
    from sbi.inference import NPE

    theta, x = simulations(task, budget, protocol.seed)
    torch.manual_seed(protocol.seed)  # the network's start, sbi's validation split and batches
    builder = density_estimator(estimator, protocol) if isinstance(estimator, str) else estimator
    inference = NPE(prior=task.prior(), density_estimator=builder, show_progress_bars=False)
    inference.append_simulations(theta, x)
    kwargs = {} if protocol.max_epochs is None else {"max_num_epochs": protocol.max_epochs}
    kwargs.update(train_args or {})
    start = time.perf_counter()
    net = inference.train(**kwargs)
    seconds = time.perf_counter() - start
    summary = inference._summary
    record = {"train_s": seconds, "epochs": int(summary["epochs_trained"][-1]),
              "best_validation_loss": float(summary["best_validation_loss"][-1]),
              "parameters": sum(p.numel() for p in net.parameters())}
    return inference.build_posterior(), record


def evaluate(task: Task, posterior: Any, protocol: Protocol, theta_o: torch.Tensor, x_o: torch.Tensor,
             refs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Per observation: C2ST against the reference, seconds to draw ``posterior_samples`` through sbi
    (``posterior.sample``, which also drops draws outside a bounded prior) and from the estimator alone,
    and the normalised posterior log-density of the true parameters."""
    out: dict[str, list] = {"c2st": [], "sample_s": [], "estimator_sample_s": [], "log_prob_true": []}
    n = protocol.posterior_samples
    estimator = posterior.posterior_estimator
    out["acceptance"] = []
    for i, (theta, x, ref) in enumerate(zip(theta_o, x_o, refs)):
        torch.manual_seed(protocol.seed + i)
        with torch.no_grad():
            start = time.perf_counter()
            pilot = estimator.sample((n,), x[None])[:, 0]
            out["estimator_sample_s"].append(time.perf_counter() - start)
            log_q = float(posterior.log_prob(theta[None], x=x, norm_posterior=False)[0])
        accepted = float(task.in_support(pilot).float().mean())
        out["acceptance"].append(accepted)
        # normalised to the prior's support as sbi does (its leakage correction: the share of n draws
        # inside), from the draws above, since sbi's own would wait for n draws inside
        out["log_prob_true"].append(log_q - math.log(accepted) if accepted > 0 else None)
        if accepted < MIN_ACCEPTANCE:
            # sbi's rejection step would run for hours: the observation counts as failed (C2ST 1)
            out["sample_s"].append(None)
            out["c2st"].append(1.0)
            draws = pilot
        else:
            start = time.perf_counter()
            draws = posterior.sample((n,), x=x, show_progress_bars=False)
            out["sample_s"].append(time.perf_counter() - start)
            out["c2st"].append(c2st(ref, draws, early_stopping=protocol.c2st_early_stopping))
        if i == 0:
            a, b = FIGURE_DIMS[task.name]
            out["figure_samples"] = draws[: protocol.figure_samples, [a, b]].round(decimals=4).tolist()
    out["c2st_mean"] = sum(out["c2st"]) / len(out["c2st"])
    return out


def _key(row: dict[str, Any]) -> tuple[str, int, str]:
    return row["task"], row["budget"], row["estimator"]


def run_benchmark(tasks: Sequence[str], budgets: Sequence[int], estimators: Sequence[str], protocol: Protocol,
                  out: Path, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (budget, task, estimator) in that order, the results file ``out`` rewritten after each;
    with ``resume``, the runs ``out`` holds already (same protocol) are kept and not run again."""
    from lunet.experiments.files.atomic import write_text_atomic

    results: dict[str, Any] = {"protocol": _protocol_dict(protocol), "references": {}, "runs": []}
    if resume and out.exists():
        old = json.loads(out.read_text())
        if old.get("protocol") != results["protocol"]:
            raise ValueError(f"{out} was written with another protocol; drop --resume or pick another --out")
        results = old
    done = {_key(r) for r in results["runs"]}

    def save() -> None:
        write_text_atomic(out, json.dumps(results, indent=1) + "\n")

    cache: dict[str, tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = {}
    for budget in budgets:
        for name in tasks:
            todo = [e for e in estimators if (name, budget, e) not in done]
            if not todo:
                continue
            task = get_task(name)
            if name not in cache:
                theta_o, x_o = task.observations(protocol.observations)
                start = time.perf_counter()
                refs = references(task, protocol, x_o)
                ref_s = time.perf_counter() - start
                cache[name] = theta_o, x_o, refs
                if name not in results["references"]:
                    log(f"[{name}] reference posteriors drawn in {ref_s:.1f} s; checking them (C2ST of two draws)")
                    scores = check_reference(task, protocol, x_o, refs)
                    dims = list(FIGURE_DIMS[name])
                    results["references"][name] = {
                        "c2st_self": scores, "c2st_self_mean": _mean(scores), "seconds": ref_s,
                        "theta_o": theta_o.tolist(), "x_o": x_o.tolist(),
                        "figure_samples": refs[0][: protocol.figure_samples, dims].tolist()}
                    save()
                    log(f"[{name}] reference C2ST self-check: mean {_mean(scores):.3f}")
            theta_o, x_o, refs = cache[name]
            for estimator in todo:
                results["runs"].append(_run_one(task, budget, estimator, protocol, theta_o, x_o, refs, log))
                save()
    return results


def _run_one(task: Task, budget: int, estimator: str, protocol: Protocol, theta_o: torch.Tensor,
             x_o: torch.Tensor, refs: Sequence[torch.Tensor], log: Callable[[str], None]) -> dict[str, Any]:
    name = task.name
    log(f"[{name}] {budget} simulations, {estimator}: training")
    try:
        posterior, record = train_estimator(task, budget, estimator, protocol)
    except Exception as exc:  # a peer that fails to train is recorded, not fatal
        row: dict[str, Any] = {"task": name, "budget": budget, "estimator": estimator,
                               "error": f"{type(exc).__name__}: {exc}"}
        log(f"[{name}] {budget} {estimator}: failed ({row['error']})")
        return row
    row = {"task": name, "budget": budget, "estimator": estimator, **record,
           **evaluate(task, posterior, protocol, theta_o, x_o, refs)}
    timed = [s for s in row["sample_s"] if s is not None]
    log(f"[{name}] {budget} {estimator}: C2ST {row['c2st_mean']:.3f}, trained {record['train_s']:.1f} s "
        f"({record['epochs']} epochs), 10k draws {_mean(timed) * 1e3 if timed else float('nan'):.1f} ms, "
        f"log q(theta_o) {_mean([v for v in row['log_prob_true'] if v is not None] or [math.nan]):.2f}")
    return row


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _protocol_dict(protocol: Protocol) -> dict[str, Any]:
    d = asdict(protocol)
    d["mcmc_steps"] = list(d["mcmc_steps"])
    return d
