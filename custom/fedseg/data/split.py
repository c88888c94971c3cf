"""``fedseg data split``: deal a dataset's cases to sites, each with training, validation and test lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedseg.data.datalist import SPLITS, write_datalist
from fedseg.data.msd import read_json
from fedseg.errors import DataError

POOLED = "site-All"


def _strip(item: dict) -> dict[str, str]:
    return {k: str(v)[2:] if str(v).startswith("./") else str(v) for k, v in item.items() if k in ("image", "label")}


def _shares(n_cases: int, sites: int, shares: list[float] | None) -> list[int]:
    weights = np.asarray(shares if shares else [1.0] * sites, dtype=float)
    if len(weights) != sites or (weights <= 0).any():
        raise ValueError(f"--shares needs {sites} positive numbers, got {shares}")
    counts = np.floor(weights / weights.sum() * n_cases).astype(int)
    for i in np.argsort(-(weights / weights.sum() * n_cases - counts))[: n_cases - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _site_splits(cases: list[dict], val_fraction: float, test_fraction: float, val_cases: int | None = None,
                 test_cases: int | None = None) -> dict[str, list[dict]]:
    n = len(cases)
    n_test = test_cases if test_cases is not None else max(1, int(round(n * test_fraction)))
    n_val = val_cases if val_cases is not None else max(1, int(round(n * val_fraction)))
    if n_test + n_val >= n:
        raise DataError(f"a site of {n} cases cannot hold {n_test} test and {n_val} validation cases and still train")
    return {"test": cases[:n_test], "validation": cases[n_test:n_test + n_val], "training": cases[n_test + n_val:]}


def split_dataset(
    dataset: Path,
    sites: int,
    out: Path,
    seed: int = 0,
    *,
    shares: list[float] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    val_cases: int | None = None,
    test_cases: int | None = None,
) -> dict[str, Path]:
    """Write ``site-1.json`` .. ``site-K.json`` and the pooled ``site-All.json``; return their paths.

    Cases are shuffled with ``seed`` and dealt out in proportion to ``shares`` (equal by default);
    no case goes to two sites, and within a site no case is in two lists. Paths stay relative to
    the dataset root, as in ``dataset.json``. ``val_cases`` and ``test_cases`` give every site exactly
    that many validation and test cases instead of the fractions.
    """
    if sites < 1:
        raise ValueError(f"--sites must be at least 1, got {sites}")
    info = read_json(Path(dataset) / "dataset.json", "dataset description (dataset.json)")
    items = [_strip(it) for it in info.get("training", []) if isinstance(it, dict)]
    if not items:
        raise DataError(f"{Path(dataset) / 'dataset.json'}: 'training' lists no cases to split")
    items.sort(key=lambda it: it["image"])
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = [items[i] for i in order]
    counts = _shares(len(shuffled), sites, shares)
    if min(counts) < 3:
        raise DataError(
            f"{dataset}: {len(items)} cases cannot give each of {sites} sites the 3 it needs "
            f"(one each for training, validation and test); synthesize more cases or use fewer sites"
        )
    out = Path(out)
    written: dict[str, Path] = {}
    pooled: dict[str, list[dict]] = {s: [] for s in SPLITS}
    start = 0
    for k, count in enumerate(counts, start=1):
        name = f"site-{k}"
        splits = _site_splits(shuffled[start:start + count], val_fraction, test_fraction, val_cases, test_cases)
        start += count
        for s in SPLITS:
            pooled[s].extend(splits[s])
        written[name] = write_datalist(out / f"{name}.json", splits, site=name, seed=seed)
    written[POOLED] = write_datalist(out / f"{POOLED}.json", pooled, site=POOLED, seed=seed)
    return written
