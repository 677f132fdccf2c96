"""Training a peer under wall-clock budgets: the clock runs around each step only, validation at
intervals with the clock paused, the best-validation weights marked at each budget."""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Optional, Sequence

import torch

from lunet.experiments.benchmarks.peers.models import PeerModel
from lunet.experiments.benchmarks.peers.protocol import LOG, Protocol
from lunet.experiments.benchmarks.peers.spaces import PeerData
from lunet.experiments.training.schedule import rate_factor

__all__ = ["optimise_step", "data_log_prob", "BestKeeper", "warm_up", "train_with_budgets"]


def _divergence(exc: Exception) -> bool:
    # torch.distributions refuses a non-finite latent: "Expected value argument ... within the support"
    return isinstance(exc, ValueError) and "support" in str(exc)


def optimise_step(model: PeerModel, optimizer: torch.optim.Optimizer, h: torch.Tensor, logdet: torch.Tensor,
                  grad_clip: Optional[float]) -> float:
    """One step on the mean NLL per dimension of the data (nats); returns it, NaN if it was not finite
    (the weights are then left as they were)."""
    try:
        loss = -(model.log_prob(h) + logdet).mean() / h.shape[1]
    except ValueError as exc:
        if _divergence(exc):
            return math.nan
        raise
    value = float(loss.detach())
    if not math.isfinite(value):
        return math.nan
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return value


@torch.no_grad()
def data_log_prob(model: PeerModel, split: tuple[torch.Tensor, torch.Tensor], elements: int = 784_000) -> torch.Tensor:
    """``log p`` of the data (N,) float64 nats: the model's ``log_prob`` of ``h`` plus the shared Jacobian,
    in batches of about ``elements`` numbers; NaN where the model refuses its input."""
    h, logdet = split
    batch = max(1, elements // h.shape[1])
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, h.shape[0], batch):
        part = h[start : start + batch]
        try:
            lp = model.log_prob(part).double()
        except ValueError as exc:
            if not _divergence(exc):
                raise
            lp = torch.full((part.shape[0],), math.nan, dtype=torch.float64, device=part.device)
        out.append(lp + logdet[start : start + batch])
    model.train(was_training)
    return torch.cat(out)


class BestKeeper:
    """The best weights by validation figure (lower is better; non-finite never counts), with their test figure."""

    def __init__(self) -> None:
        self.val = math.inf
        self.test: Optional[tuple[float, float]] = None
        self.state: Optional[dict[str, torch.Tensor]] = None
        self.at_seconds: Optional[float] = None

    def offer(self, val: float, model: torch.nn.Module, seconds: float) -> bool:
        """Keep a copy of ``model``'s weights if ``val`` beats the best so far; returns whether it did."""
        if not (math.isfinite(val) and val < self.val):
            return False
        self.val, self.at_seconds = val, seconds
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


def warm_up(model: PeerModel, data: PeerData, protocol: Protocol) -> None:
    """One untimed step on a copy of ``model`` (its own optimiser, its own batch): the process's
    one-time costs (first autograd pass, allocator, thread pool) are paid outside every budget,
    whichever model runs first, and the model itself is left untouched."""
    copy_ = copy.deepcopy(model)
    optimizer = torch.optim.Adam([p for p in copy_.parameters() if p.requires_grad], lr=protocol.lr)
    gen = torch.Generator().manual_seed(protocol.seed + 1)
    rows = torch.arange(min(protocol.batch_size, data.train.shape[0]), device=data.train.device)
    h, logdet = data.train_batch(rows, gen)
    optimise_step(copy_, optimizer, h, logdet, protocol.grad_clip)


def train_with_budgets(model: PeerModel, data: PeerData, budgets: Sequence[float], protocol: Protocol,
                       log: Optional[LOG] = None) -> dict[str, Any]:
    """Train ``model`` up to the largest budget (training seconds: steps only, evaluation paused)
    and report each budget mark. Loads the best-validation weights at the end. The rate follows
    ``protocol``'s warm-up and schedule; a cosine reaches zero at the largest budget.

    Returns ``{"marks": [...], "curve": [...], "eval_seconds", "max_step_seconds", "diverged"}``:
    a mark per budget with the training and CPU seconds at which it was reached, steps, epochs, the
    best validation figure so far and the test figure (and its standard error) of those weights."""
    budgets = sorted(float(b) for b in budgets)
    if not budgets or budgets[0] <= 0:
        raise ValueError(f"budgets must be positive seconds, got {budgets}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=protocol.lr)
    gen = torch.Generator().manual_seed(protocol.seed)
    device = data.train.device
    n = data.train.shape[0]
    order = torch.randperm(n, generator=gen).to(device)
    position = 0
    clock = cpu = eval_seconds = max_step = 0.0
    steps = rows = 0
    keeper = BestKeeper()
    curve: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    diverged: Optional[str] = None
    first = protocol.eval_first * budgets[0]

    def evaluate() -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        val, _ = data.figure(data_log_prob(model, data.val, protocol.eval_elements))
        if keeper.offer(val, model, clock):
            keeper.test = data.figure(data_log_prob(model, data.test, protocol.eval_elements))
        curve.append({"train_seconds": clock, "val": val, "best_val": keeper.val,
                      "test": keeper.test[0] if keeper.test else None})
        eval_seconds += time.perf_counter() - start

    model.train()
    warm_up(model, data, protocol)
    evaluate()
    next_eval = first
    for budget in budgets:
        while clock < budget and diverged is None:
            target = min(next_eval, budget)
            while clock < target and diverged is None:
                start, start_cpu = time.perf_counter(), time.process_time()
                if position >= n:
                    order, position = torch.randperm(n, generator=gen).to(device), 0
                idx = order[position : position + protocol.batch_size]
                position += idx.numel()
                h, logdet = data.train_batch(idx, gen)
                factor = rate_factor(steps, protocol.schedule, protocol.warmup_steps, 0, clock / budgets[-1])
                for group in optimizer.param_groups:
                    group["lr"] = protocol.lr * factor
                loss = optimise_step(model, optimizer, h, logdet, protocol.grad_clip)
                took = time.perf_counter() - start
                clock += took
                cpu += time.process_time() - start_cpu
                max_step = max(max_step, took)
                steps += 1
                rows += idx.numel()
                if math.isnan(loss):
                    diverged = f"non-finite loss at step {steps} ({clock:.1f} training seconds)"
            evaluate()
            next_eval = clock + max(first, protocol.eval_growth * clock)
        mark: dict[str, Any] = {"budget_s": budget, "train_seconds": clock, "process_seconds": cpu, "steps": steps,
                "epochs": rows / n, "val": keeper.val, "best_at_s": keeper.at_seconds,
                "test": keeper.test[0] if keeper.test else None, "test_sem": keeper.test[1] if keeper.test else None,
                "evaluations": len(curve)}
        if diverged is not None:
            mark["stopped"] = diverged
        marks.append(mark)
        if log:
            test = "—" if mark["test"] is None else f"{mark['test']:.4f} {data.unit}"
            log(f"  {budget:g} s: {clock:.1f} training s ({cpu:.1f} CPU s), {mark['epochs']:.2f} epochs, "
                f"test {test} (best validation at {keeper.at_seconds or 0:.1f} s)"
                + (f"; stopped: {diverged}" if diverged else ""))
    if keeper.state is not None:
        model.load_state_dict(keeper.state)
    model.eval()
    return {"marks": marks, "curve": curve, "eval_seconds": eval_seconds, "max_step_seconds": max_step,
            "diverged": diverged}
