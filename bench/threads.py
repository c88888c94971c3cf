"""Threads: trainings that share a machine's cores, with OpenMP's spin-waiting and with passive waiting.

The NVFlare simulator runs its sites as processes side by side, and ``make test`` runs two test files
at once; each torch process trains on its own OpenMP thread pool. By default an idle OpenMP thread
spins for a while before it sleeps, which is fast alone and ruinous when the pools together hold
more threads than there are cores. This runs the same tiny training loop (the spleen tiny UNet, a
fixed batch) alone and as ``copies`` processes at once, under ``OMP_WAIT_POLICY`` unset (spinning)
and ``PASSIVE``, and reports each as a ratio to the loop run alone with spinning, in one command:

    python -m bench.threads [--threads 2] [--copies 2] [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

LOOP = """
import sys, time, torch
torch.set_num_threads({threads}); torch.manual_seed(0)
from fedseg.networks import build_network
from fedseg.tasks import get_task
net = build_network(get_task("spleen", "tiny"))
opt = torch.optim.SGD(net.parameters(), 0.01)
x = torch.randn(2, 1, 64, 64, 48)
net(x).mean().backward()  # warm-up: first-call allocations are not what is compared
start = time.perf_counter()
for _ in range({steps}):
    opt.zero_grad(); net(x).mean().backward(); opt.step()
print(time.perf_counter() - start)
"""


def _seconds(policy: str | None, copies: int, threads: int, steps: int) -> list[float]:
    """Wall seconds of each of ``copies`` loops started together under the OpenMP wait ``policy``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    code = LOOP.format(threads=threads, steps=steps)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]
    return [float(p.communicate(timeout=1800)[0].strip().splitlines()[-1]) for p in procs]


def run(threads: int = 2, copies: int = 2, steps: int = 15) -> dict:
    rows = {}
    for policy in (None, "PASSIVE"):
        name = policy or "spin (default)"
        rows[name] = {"alone_s": _seconds(policy, 1, threads, steps)[0],
                      f"{copies}_at_once_s": max(_seconds(policy, copies, threads, steps))}
    reference = rows["spin (default)"]["alone_s"]
    for row in rows.values():
        row.update({k.replace("_s", "_ratio"): round(v / reference, 2) for k, v in list(row.items())})
    return {"threads_per_process": threads, "copies": copies, "cores": os.cpu_count(), "steps": steps,
            "reference": "one loop alone, OpenMP spinning", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--steps", type=int, default=15)
    a = p.parse_args(argv)
    print(json.dumps(run(a.threads, a.copies, a.steps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
