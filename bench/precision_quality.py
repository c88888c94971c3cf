"""bf16 against fp32 over a whole tiny spleen training: held-out Dice and time, per seed.

Usage::

    python bench/precision_quality.py [--seeds 0 1] [--precisions fp32 bf16] [--iterations 240]

Each (seed, precision) trains the tiny spleen engine (channels-last, the CPU default) for
``--iterations`` steps on the 10 bench phantoms' training cases (the test suite's dataset: 10
phantoms, seed 1, split seed 0), then scores the validation and test cases with its own precision
and again in fp32. One JSON line per run on stdout. This is the evidence behind ``precision: auto``
picking bf16 on CPUs with AMX (bench/README.md, "Precision").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from bench.common import single_site_items
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.tasks import get_task

    p = argparse.ArgumentParser(prog="python bench/precision_quality.py", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    p.add_argument("--iterations", type=int, default=240)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/bench_work")
    a = p.parse_args(argv)
    items = single_site_items(Path(a.work).resolve() / "single" / "spleen_10", 10)
    spec = get_task("spleen", "tiny")
    held_out = items["validation"] + items["test"]
    for seed in a.seeds:
        for precision in a.precisions:
            engine = SegmentationEngine(spec, Runtime.create("cpu", precision=precision, num_threads=a.threads),
                                        seed=seed)
            data = engine.train_data(items["training"])
            start = time.perf_counter()
            result = engine.train(data, iterations=a.iterations)
            train_s = time.perf_counter() - start
            own = engine.evaluate(engine.eval_data(held_out))
            scorer = SegmentationEngine(spec, Runtime.create("cpu", precision="fp32", num_threads=a.threads))
            fp32 = scorer.evaluate(scorer.eval_data(held_out), weights=engine.get_weights())
            print(json.dumps({"seed": seed, "precision": precision, "iterations": a.iterations,
                              "train_s": round(train_s, 1), "final_loss": round(result.final_loss, 4),
                              "held_out_dice": round(own.mean, 4), "held_out_dice_scored_fp32": round(fp32.mean, 4)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
