"""Data-parallel helpers that need ``torch.distributed`` only (no Ray, no NVFlare).

Any launcher that starts one process per worker with a process group (Ray Train today,
``torchrun`` tomorrow) shares them: shards of the cases, DDP wrapping, the same steps on every
worker, sharded evaluation gathered on all workers, and the average of the workers' weights.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist

from fedseg.engine.data import EvalData, TrainData
from fedseg.engine.engine import SegmentationEngine
from fedseg.engine.metrics import DiceScores
from fedseg.transforms import seed_from

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Worker ``rank``'s share of ``items``: every ``world``-th item, so shard sizes differ by at most one."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    return list(items[rank::world])


def shard_batch_size(batch_size: int, n_items: int) -> int:
    """The batch size the engine's loader uses for ``n_items`` cases (never more than it has)."""
    return max(1, min(batch_size, n_items))


def steps_per_epoch(n_items: int, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch that let every worker see each of its cases once.

    DDP needs all workers to take the same number of steps (each step is a collective), so every
    worker takes as many as the worker with the largest shard needs; smaller shards wrap around.
    """
    if n_items < world:
        raise ValueError(f"{n_items} training case(s) cannot be shared by {world} workers")
    sizes = [len(range(r, n_items, world)) for r in range(world)]
    return max(math.ceil(n / shard_batch_size(batch_size, n)) for n in sizes)


def average_weights(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of several workers' state dicts.

    Floating-point entries (parameters, BatchNorm running statistics) are averaged in float64 and
    cast back; integer entries (``num_batches_tracked``) must agree and are taken from the first.
    """
    if not states:
        raise ValueError("no worker weights to average")
    keys = list(states[0])
    for i, s in enumerate(states[1:], start=1):
        if list(s) != keys:
            raise ValueError(f"worker {i} returned different weight names than worker 0")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.dtype.is_floating_point:
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


def all_finite(weights: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in weights.values() if v.dtype.is_floating_point)


def wrap_ddp(engine: SegmentationEngine, world: int) -> None:
    """Train through DDP when there is more than one worker (one worker: the bare network)."""
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        dev = engine.runtime.device
        engine.wrap_model(lambda m: DistributedDataParallel(m, device_ids=[dev.index] if dev.type == "cuda" else None))


def reseed(data: TrainData, seed: int, rank: int, epoch: int) -> None:
    """Shuffling and augmentation drawn from (seed, rank, epoch): a restarted epoch draws the same patches."""
    if data.loader.generator is not None:
        data.loader.generator.manual_seed(seed_from(seed, rank, epoch))
    transform = getattr(data.loader.dataset, "transform", None)
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed_from(seed, rank, epoch, 1))


def mean_across(engine: SegmentationEngine, value: float, world: int) -> float:
    """``value`` averaged over the workers (a collective: every worker must call it)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=engine.runtime.device)
    dist.all_reduce(t)
    return float(t.item()) / world


class ShardedEval:
    """One worker's share of a list of cases, preprocessed once; :meth:`scores` gathers all shares.

    Dice is computed per case and averaged over cases, so the gathered figures are exactly those
    of one process scoring every case, in 1/world of the time.
    """

    def __init__(self, engine: SegmentationEngine, items: list[dict], rank: int, world: int):
        self.engine, self.world = engine, world
        self.indices = list(range(rank, len(items), world))
        self.data: EvalData | None = engine.eval_data([items[i] for i in self.indices]) if self.indices else None

    def scores(self, label: str, weights=None) -> DiceScores:
        engine = self.engine
        if weights is not None:
            engine.set_weights(weights)
        rows = []
        if self.data is not None:
            local = engine.evaluate(self.data, label=label)
            rows = list(zip(self.indices, local.per_case, local.false_positive))
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, rows)
            rows = sorted((r for part in gathered for r in part), key=lambda r: r[0])
        out = DiceScores(engine.class_names[1:])
        for _, dice, fp in rows:
            out.add(list(dice), list(fp))
        return out
