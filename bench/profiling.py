"""Where a full-size training step and a full-size inference spend their time, before and after.

Usage::

    python bench/profiling.py [--what train infer] [--variant full] [--threads 2] [--steps 3]
                            [--configs before fp32 fp32+cl bf16 bf16+cl] [--ops] [--out FILE]

``train``: the card's spleen step (batch 2 x 4 crops of 96^3) through the engine's own model,
loss, optimizer and cached phantom loader, split into data, forward + loss, backward and
optimizer; for each phase the wall time, minor page faults and the kernel (sys) and user CPU
time, from ``getrusage``; peak RSS per configuration is measured in a child process of its own
(``ru_maxrss`` only grows). ``infer``: ``Predictor.mask`` on the real CT split into its steps
(the "before" configuration without the body crop, as ``fedseg infer`` ran before). The
configuration ``before`` is the engine as it was: fp32, contiguous, and deterministic mode's NaN
fill of every new tensor. Configurations alternate inside one process, so load from other jobs
hits them alike. ``--ops`` adds torch.profiler's top operators of one step.
Results go to stdout and, with ``--out``, to a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

REAL_CT = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "ct.nii.gz"
# name: (precision, channels-last, deterministic mode's NaN fill of new tensors). "before" is the engine as it
# was before these fixes: fp32, contiguous, with the fill.
CONFIGS = {"before": ("fp32", False, True), "fp32": ("fp32", False, False), "fp32+cl": ("fp32", True, False),
           "bf16": ("bf16", False, False), "bf16+cl": ("bf16", True, False)}


class Meter:
    """Wall time, minor page faults and CPU time (user, sys) accumulated per named phase."""

    def __init__(self) -> None:
        self.phases: dict[str, list[float]] = {}
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float, float]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), float(r.ru_minflt), r.ru_utime, r.ru_stime

    def restart(self) -> None:
        self._last = self._now()

    def lap(self, name: str) -> None:
        now = self._now()
        acc = self.phases.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        for i in range(4):
            acc[i] += now[i] - self._last[i]
        self._last = now

    def per(self, n: int) -> dict[str, dict[str, float]]:
        out = {name: {"wall_s": w / n, "minor_faults_m": f / n / 1e6, "user_s": u / n, "sys_s": s / n}
               for name, (w, f, u, s) in self.phases.items()}
        out["total"] = {k: sum(v[k] for v in out.values()) for k in ("wall_s", "minor_faults_m", "user_s", "sys_s")}
        return out


def _fill(on: bool) -> None:
    import torch.utils.deterministic

    torch.utils.deterministic.fill_uninitialized_memory = on


def _engine(variant: str, precision: str, channels_last: bool, threads: int):
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.tasks import get_task

    runtime = Runtime.create("cpu", precision=precision, num_threads=threads, channels_last=channels_last)
    return SegmentationEngine(get_task("spleen", variant), runtime, seed=0)


def _train_items(work: Path, cases: int) -> list[dict]:
    from bench.common import single_site_items

    return single_site_items(work / "single" / "spleen", cases)["training"]


def train_steps(engine, data, steps: int, meter: Meter | None = None) -> None:
    """``steps`` optimizer steps as ``SegmentationEngine.train`` takes them, timed phase by phase."""
    model, opt, loss_fn = engine.model, engine.optimizer, engine.loss_fn
    model.train()
    batches = iter(data.loader)
    for _ in range(steps):
        if meter:
            meter.restart()
        batch = next(batches, None)
        if batch is None:
            batches = iter(data.loader)
            batch = next(batches)
        x, y = batch["image"], batch["label"]
        if meter:
            meter.lap("data")
        opt.zero_grad(set_to_none=True)
        with engine._autocast():
            loss = loss_fn(model(x), y)
        float(loss.detach())
        if meter:
            meter.lap("forward + loss")
        engine.scaler.scale(loss).backward()
        if meter:
            meter.lap("backward")
        engine.scaler.step(opt)
        engine.scaler.update()
        if meter:
            meter.lap("optimizer")


def profile_train(args) -> dict:
    items = _train_items(Path(args.work), args.cases)
    engines = {}
    for name in args.configs:
        precision, cl, fill = CONFIGS[name]
        engine = _engine(args.variant, precision, cl, args.threads)
        engines[name] = (engine, engine.train_data(items))
        _fill(fill)
        train_steps(*engines[name], 1)  # warm-up: first-touch of the allocator, oneDNN kernel choice
    meters = {name: Meter() for name in args.configs}
    for _ in range(args.steps):  # alternate, one step each, so that others' load hits every config alike
        for name in args.configs:
            _fill(CONFIGS[name][2])
            train_steps(*engines[name], 1, meters[name])
    out = {name: meters[name].per(args.steps) for name in args.configs}
    for name in args.configs:
        out[name]["peak_rss_gb"] = _peak_rss_alone(args, name)
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        for name in args.configs:
            _fill(CONFIGS[name][2])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                train_steps(*engines[name], 1)
            out[name]["top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return out


def _peak_rss_alone(args, name: str) -> float:
    """Peak RSS (GB) of a process that caches the data and takes 2 steps in one configuration."""
    code = (f"import sys, resource; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            f"from bench.profiling import _engine, _fill, _train_items, train_steps, CONFIGS; from pathlib import Path; "
            f"p, cl, fill = CONFIGS[{name!r}]; e = _engine({args.variant!r}, p, cl, {args.threads}); _fill(fill); "
            f"train_steps(e, e.train_data(_train_items(Path({args.work!r}), {args.cases})), 2); "
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return float("nan")
    return int(done.stdout.split()[-1]) / 2**20


def infer_phases(predictor, image_path: Path, out: Path, meter: Meter) -> None:
    """``Predictor.segment`` step by step (the calls it makes, one file alone), with the input check the CLI runs first."""
    import numpy as np

    from fedseg.infer import check_input, save_mask_like

    meter.restart()
    check_input(image_path, predictor.spec)
    meter.lap("check input")
    image = predictor.loader(str(image_path))
    meter.lap("read")
    oriented = predictor.orient({"image": image})["image"]
    grid, shape = predictor.resampling_grid(oriented)
    meter.lap("orient + body box")
    region = predictor.to_grid(oriented, grid, shape)
    meter.lap("resample to training grid")
    net_image = predictor.rest({"image": region})["image"]
    meter.lap("intensity + crop")
    logits = predictor.engine.predict_logits(net_image)
    meter.lap("sliding windows")
    probs, box = predictor.back_to_input(logits, net_image, image)
    meter.lap("softmax + resample back")
    mask = np.zeros(tuple(image.shape[1:]), dtype=np.uint8)
    mask[box] = torch.max(probs, 0).indices.numpy().astype(np.uint8)
    meter.lap("argmax + restore")
    save_mask_like(image_path, mask, out)
    meter.lap("write mask")


def profile_infer(args) -> dict:
    import tempfile

    from fedseg.checkpoint import save_model
    from fedseg.infer import Predictor

    image = Path(args.image)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        predictors, fills = {}, {}
        for name in args.configs:
            precision, cl, fill = CONFIGS[name]
            engine = _engine(args.variant, precision, cl, args.threads)
            model = save_model(Path(tmp) / "model.pt", engine.get_weights(), engine.spec)
            # "before" is the old path: whole volume both ways; the others use the body crop.
            key = f"{name}, body crop {'off' if name == 'before' else 'on'}"
            predictors[key] = Predictor(engine.spec, model, engine.runtime, body_crop=name != "before")
            fills[key] = fill
            _fill(fill)
            infer_phases(predictors[key], image, Path(tmp) / "mask.nii.gz", Meter())  # warm-up
        meters = {key: Meter() for key in predictors}
        for _ in range(args.steps):
            for key, predictor in predictors.items():
                _fill(fills[key])
                infer_phases(predictor, image, Path(tmp) / "mask.nii.gz", meters[key])
        for key in predictors:
            out[key] = meters[key].per(args.steps)
    return out


def _print(title: str, result: dict) -> None:
    print(f"\n## {title}")
    for name, phases in result.items():
        print(f"\n{name}" + (f" (peak RSS {phases['peak_rss_gb']:.2f} GB)" if "peak_rss_gb" in phases else ""))
        for phase, v in phases.items():
            if isinstance(v, dict):
                print(f"  {phase:26s} {v['wall_s']:7.3f} s  faults {v['minor_faults_m']:6.3f} M  "
                      f"user {v['user_s']:6.3f} s  sys {v['sys_s']:6.3f} s")
        if "top_ops" in phases:
            print(phases["top_ops"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/profiling.py", description=__doc__.splitlines()[0])
    p.add_argument("--what", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    p.add_argument("--variant", default="full", choices=("full", "tiny"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps (inferences) per configuration")
    p.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=["before", "fp32+cl", "bf16+cl"])
    p.add_argument("--cases", type=int, default=10, help="phantoms synthesized for the training loader")
    p.add_argument("--work", default="runs/bench_work")
    p.add_argument("--image", default=str(REAL_CT), help="the volume to segment (default: the real CT)")
    p.add_argument("--ops", action="store_true", help="torch.profiler's top operators of one step")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    a.work = str(Path(a.work).resolve())
    torch.set_num_threads(a.threads)
    report = {"command": " ".join(["python bench/profiling.py", *(argv if argv is not None else sys.argv[1:])])}
    if "train" in a.what:
        report["train"] = profile_train(a)
        _print(f"training step, spleen {a.variant}, {a.threads} threads, per step (mean of {a.steps})", report["train"])
    if "infer" in a.what:
        report["infer"] = profile_infer(a)
        _print(f"inference, spleen {a.variant}, {Path(a.image).name}, {a.threads} threads (mean of {a.steps})",
               report["infer"])
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
