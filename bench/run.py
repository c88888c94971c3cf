"""fedseg benchmark suite: every comparison side by side, one Markdown table and one JSON file.

Usage::

    python -m bench [--quick | --full] [--only NAME ...] [--out runs/bench.json] [--work DIR]
    python bench/run.py ...            # the same

``--quick`` (default): the tiny spleen variant on CPU, a few minutes on 2 cores. ``--full``: the
card's spleen recipe (96^3 patches, CUDA and AMP when available) for a GPU machine. Comparisons
(``--only`` picks some): throughput, inference, fl_overhead, scale, aggregation, quality, and
sim_to_real (only with ``--only``: a phantom-trained model scored on the real CTs, bench/sim_to_real.py).
See bench/README.md for what every row means.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `import bench` work from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SPEED_FLAGS, Settings, machine_info, markdown_table, resolve_device, settings_for, single_site_items

NAMES = ("throughput", "time_to_dice", "inference", "aggregation", "fl_overhead", "scale", "quality", "sim_to_real")
HEAD = ["comparison", "result", "detail", "ratio / note"]


def _set_threads(settings: Settings) -> None:
    import torch

    torch.set_num_threads(settings.threads)  # a section may have changed it (site runtimes use 1)


def run_section(name: str, settings: Settings, work: Path, state: dict) -> tuple[dict, list[list]]:
    """Run one comparison; return its JSON body and its table rows."""
    from bench import aggregation, fl_overhead, inference, quality, scale, sim_to_real, throughput, time_to_dice

    _set_threads(settings)
    if name in ("throughput", "time_to_dice", "inference") and "items" not in state:
        state["items"] = single_site_items(work / "single" / "spleen", settings.cases)
    if name == "throughput":
        result = throughput.run(settings, state["items"], work, keep=state)
        return result, throughput.rows(result)
    if name == "time_to_dice":
        result = time_to_dice.run(settings, state["items"])
        return result, time_to_dice.rows(result)
    if name == "inference":
        result = inference.run(settings, state["items"], work, state.get("trained"))
        return result, inference.rows(result)
    if name == "aggregation":
        result = aggregation.run(settings)
        return result, aggregation.table_rows(result)
    if name == "fl_overhead":
        result = fl_overhead.run(settings, work, keep=state)
        return result, fl_overhead.rows(result)
    if name == "scale":
        result = scale.run(settings, work, reuse=state.get("sim_runs"))
        return result, scale.rows(result)
    if name == "quality":
        result = quality.run(settings, work)
        return result, quality.rows(result)
    if name == "sim_to_real":
        result = sim_to_real.run_section(settings, work)
        return result, sim_to_real.rows(result)
    raise ValueError(f"unknown comparison {name!r}; choose from {', '.join(NAMES)}")


def run_all(settings: Settings, names: list[str], work: Path, items: dict[str, list[dict]] | None = None) -> dict:
    """Run the named comparisons in order; a failing one is recorded and the others still run.

    ``items`` (training/validation/test lists of one site) replaces the phantoms the single-site
    comparisons would otherwise synthesize.
    """
    report = {"mode": settings.mode, "settings": settings.as_json(),
              "machine": machine_info(resolve_device(settings.device)), "results": {}, "seconds": {}, "errors": {}}
    rows: list[list] = []
    state: dict = {"items": items} if items else {}
    for name in names:
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            report["results"][name], section_rows = run_section(name, settings, work, state)
            rows += section_rows
        except Exception as exc:  # one broken comparison must not hide the others' numbers
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            rows.append([name, "FAILED", f"{type(exc).__name__}: {str(exc)[:80]}", ""])
        report["seconds"][name] = round(time.perf_counter() - start, 1)
        print(f"[bench] {name} done in {report['seconds'][name]:.0f} s", file=sys.stderr, flush=True)
    report["table"] = markdown_table(HEAD, rows)
    report["acceptance"] = acceptance(report["results"])
    report["total_seconds"] = round(sum(report["seconds"].values()), 1)
    return report


def acceptance(results: dict) -> list[dict]:
    """The issue's three goals, from this run's figures (missing when their comparison did not run)."""
    out = []
    if "throughput" in results:
        r = results["throughput"]
        out.append({"goal": "training patches/s, fedseg train / MONAI tutorial loop", "target": ">= 1.5",
                    "value": r["ratio_fedseg_over_tutorial"], "met": r["ratio_fedseg_over_tutorial"] >= 1.5})
    if "inference" in results:
        r = results["inference"]
        met = r["ratio_fedseg_over_monai_same_settings"] >= 2.0 and r["dice_agree"]
        out.append({"goal": f"inference volumes/s, fedseg infer / plain MONAI at equal Dice "
                            f"(|diff| {r['dice_difference']:.4f} <= {r['dice_tolerance']})", "target": ">= 2",
                    "value": r["ratio_fedseg_over_monai_same_settings"], "met": met})
    if "fl_overhead" in results:
        r = results["fl_overhead"]
        value = r["fl_cost_per_steady_round_s"]
        out.append({"goal": "NVFlare's cost per round, tiny 2-site job (s)", "target": "<= 1",
                    "value": value, "met": value <= 1.0})
    return out


def _finite(value):
    """JSON without NaN or infinity (strict parsers refuse them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(report: dict, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="tiny variant, CPU (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the card's recipe, for a GPU")
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=f"some of: {', '.join(NAMES)}")
    p.add_argument("--out", default="runs/bench.json")
    p.add_argument("--work", default="runs/bench_work",
                   help="folder for phantoms and runs; phantoms already there are reused (default: %(default)s)")
    p.add_argument("--quality-schedule", nargs=3, type=int, metavar=("ROUNDS", "EPOCHS", "CASES"),
                   help="override the quality comparison's rounds, local epochs per round and cases per site "
                        "(e.g. 10 6 15 for a meaningful CPU run of the tiny variant)")
    a = p.parse_args(argv)
    settings = settings_for(a.mode or "quick")
    if a.quality_schedule:
        r, e, n = a.quality_schedule
        settings = replace(settings, quality_rounds=r, quality_local_epochs=e, quality_cases_per_site=n, notes=())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    work = Path(a.work).resolve()
    names = list(a.only) if a.only else [n for n in NAMES if n in settings.default_sections]
    report = run_all(settings, names, work)
    report["work"] = str(work)
    m = report["machine"]
    print(f"\nfedseg benchmarks, {settings.mode} mode: {m['cpu_count']} CPUs ({m['cpu_model']}; "
          f"flags {' '.join(m['cpu_flags']) or 'none of ' + ', '.join(SPEED_FLAGS)}; torch {m['torch_cpu_capability']}, "
          f"precision auto = {m['auto_precision_cpu']}), device {m['device']}"
          f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, torch {m['torch']}, MONAI {m['monai']}, "
          f"NVFlare {m['nvflare']}; load average at start {m.get('load_average_1min', 'n/a')}\n")
    print(report["table"])
    if report["acceptance"]:
        print("\n" + markdown_table(["goal", "target", "this run", "met"],
                                     [[g["goal"], g["target"], g["value"], "yes" if g["met"] else "NO"]
                                      for g in report["acceptance"]]))
    for note in settings.notes:
        print(f"\nnote: {note}")
    print(f"\n{report['total_seconds']:.0f} s in all; JSON in {write_report(report, Path(a.out))}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
