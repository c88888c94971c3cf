"""Server-side aggregation of K site updates: NVFlare's in-time FedAvg against keep-all-then-average.

fedseg's jobs run :class:`fedseg.flare.controller.ConsortiumFedAvg`, a subclass of NVFlare's
``FedAvg`` created without a custom aggregator, so every update goes through
``FedAvg._aggregate_one_result`` into a ``WeightedAggregationHelper`` as it arrives (in-time
aggregation) and ``_get_aggregated_result`` divides by the summed weights. This benchmark drives
exactly those two methods of a ``ConsortiumFedAvg`` with ``FLModel`` updates, one by one, as NumPy
arrays (what the server receives with the recipe's default NumPy exchange format). The naive
reference keeps all K updates and averages them with ``np.stack`` per parameter.

Peak memory is what ``tracemalloc`` sees (NumPy reports its buffers to it) above the memory held
before the round, updates included; time is the aggregation calls only (not making the updates).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Callable

import numpy as np

from bench.common import Settings

NUM_STEPS = "NUM_STEPS_CURRENT_ROUND"


def base_weights(variant: str) -> dict[str, np.ndarray]:
    """The spleen UNet's state dict as NumPy arrays (full variant: about 4.8 M parameters)."""
    from fedseg.networks import build_network
    from fedseg.tasks import get_task

    net = build_network(get_task("spleen", variant))
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def make_update(base: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """Site ``index``'s update: the base weights scaled by a site-specific factor (integer buffers copied).

    A fresh array per parameter, as a deserialized update is; cheaper to draw than random noise.
    """
    factor = np.float32(1.0 + 0.01 * (index + 1))
    return {k: v * factor if v.dtype.kind == "f" else v.copy() for k, v in base.items()}


def _controller(k: int):
    """A ``ConsortiumFedAvg`` in the state ``FedAvg.run`` puts it in at the start of a round."""
    from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

    from fedseg.flare.controller import ConsortiumFedAvg

    c = ConsortiumFedAvg(min_clients=1, num_rounds=1)
    # The per-round reset FedAvg.run does before sending the task (built-in aggregation branch).
    c.current_round = 0
    c._aggr_helper = WeightedAggregationHelper(exclude_vars=c.exclude_vars)
    c._aggr_metrics_helper = WeightedAggregationHelper()
    c._all_metrics, c._received_count, c._expected_count = True, 0, k
    c._params_type, c._site_metric_weights = None, {}
    c._targets = [f"site-{i + 1}" for i in range(k)]
    return c


def in_time(base: dict, k: int) -> tuple[dict, float]:
    """NVFlare's path: each update is folded into the running sum on arrival, then dropped."""
    from nvflare.app_common.abstract.fl_model import FLModel

    controller, spent = _controller(k), 0.0
    for i in range(k):
        update = FLModel(params=make_update(base, i), metrics={"val_dice": 0.5},
                         meta={NUM_STEPS: 10 + i, "client_name": f"site-{i + 1}"})
        start = time.perf_counter()
        controller._aggregate_one_result(update)
        spent += time.perf_counter() - start
        del update  # the server keeps nothing of an update once it is added
    start = time.perf_counter()
    result = controller._get_aggregated_result()
    spent += time.perf_counter() - start
    return result.params, spent


def keep_all(base: dict, k: int) -> tuple[dict, float]:
    """The naive way: hold every update, then stack and average each parameter."""
    updates = [make_update(base, i) for i in range(k)]
    weights = np.asarray([10 + i for i in range(k)], dtype=np.float64)
    start = time.perf_counter()
    out = {key: np.average(np.stack([u[key] for u in updates]), axis=0, weights=weights).astype(base[key].dtype)
           for key in base}
    return out, time.perf_counter() - start


def _measured(fn: Callable[[], tuple[dict, float]]) -> tuple[dict, float, float]:
    """Run one aggregation; return its result, its time and its peak traced memory (MB)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result, seconds = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, (peak - before) / 2**20


def run(settings: Settings) -> dict:
    base = base_weights(settings.agg_variant)
    params = int(sum(v.size for v in base.values() if v.dtype.kind == "f"))
    model_mb = sum(v.nbytes for v in base.values()) / 2**20
    rows = []
    for k in settings.agg_ks:
        intime_params, intime_s, intime_mb = _measured(lambda: in_time(base, k))
        naive_params, naive_s, naive_mb = _measured(lambda: keep_all(base, k))
        worst = max(float(np.max(np.abs(intime_params[key] - naive_params[key]))) for key in base
                    if base[key].dtype.kind == "f")
        del intime_params, naive_params
        rows.append({"k": k, "in_time_s": intime_s, "keep_all_s": naive_s, "in_time_peak_mb": intime_mb,
                     "keep_all_peak_mb": naive_mb, "max_abs_difference": worst})
    return {"network": f"spleen/{settings.agg_variant} UNet", "parameters": params, "model_mb": model_mb,
            "aggregator": "fedseg.flare.controller.ConsortiumFedAvg -> nvflare FedAvg built-in in-time aggregation "
                          "(WeightedAggregationHelper)",
            "exchange_format": "numpy", "by_k": rows}


def table_rows(result: dict) -> list[list]:
    out = []
    for r in result["by_k"]:
        out.append([f"aggregation K={r['k']}", f"in-time {r['in_time_s']:.3g} s, {r['in_time_peak_mb']:.0f} MB",
                    f"keep-all {r['keep_all_s']:.3g} s, {r['keep_all_peak_mb']:.0f} MB",
                    f"max |diff| {r['max_abs_difference']:.1e}"])
    return out
