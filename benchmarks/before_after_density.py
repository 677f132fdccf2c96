"""Density and sampling of two source trees side by side: a child process per tree and round, the
order alternated, one torch thread; prints the medians over rounds and their ratio.

    python benchmarks/before_after_density.py BEFORE_SRC AFTER_SRC [ROUNDS]

Each child times, for the paper's LU-Net (4 x 784) and the spline one: the frozen flow's density and
sampling at batch 1,000, its sampling at batch 1, the module's density at batch 1,000 and its
sampling at batch 1 (medians of repeated calls). Pin it to a quiet core (taskset)."""
import json
import os
import statistics
import subprocess
import sys

TREES = {"before": sys.argv[1], "after": sys.argv[2]}
CHILD = r'''
import json, time, torch
torch.set_num_threads(1)
from lunet import LUNet
def t(fn, n):
    fn(); best = []
    for _ in range(n):
        s = time.perf_counter(); fn(); best.append(time.perf_counter() - s)
    best.sort(); return best[len(best) // 2] * 1e3
out = {}
for act in ("leaky_softplus", "spline"):
    torch.manual_seed(0)
    flow = LUNet(784, 4, activation=act) if act == "spline" else LUNet(784, 4)
    frozen = flow.frozen()
    x = torch.randn(1000, 784)
    out[act] = {
        "frozen density 1000 ms": t(lambda: frozen.log_prob(x), 15),
        "frozen sampling 1000 ms": t(lambda: frozen.sample(1000), 15),
        "frozen sampling 1 ms": t(lambda: frozen.sample(1), 200),
        "module density 1000 ms": t(lambda: flow.log_prob(x), 10),
        "module sampling 1 ms": t(lambda: flow.sample(1), 100),
    }
print(json.dumps(out))
'''
rounds = {k: [] for k in TREES}
for r in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
    for name, src in (TREES.items() if r % 2 == 0 else reversed(list(TREES.items()))):
        res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}, check=True)
        rounds[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
print("| flow | figure | before | after | after / before |")
print("| --- | --- | --- | --- | --- |")
for act in ("leaky_softplus", "spline"):
    for fig in rounds["before"][0][act]:
        b = statistics.median(x[act][fig] for x in rounds["before"])
        a = statistics.median(x[act][fig] for x in rounds["after"])
        print(f"| {act} | {fig} | {b:.3f} | {a:.3f} | {a / b:.3f} |")
