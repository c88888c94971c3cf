"""Training backends by name: one map that the site YAML check, the CLI and the FL client all read.

A backend is where a site's training runs: ``local`` (this process) or ``ray`` (the site's own
Ray cluster, data-parallel). Each names its FL site trainer (a
:class:`fedseg.runners.site.SiteTrainer`) and its ``fedseg train`` runner as ``module:attribute``
strings, imported only when used, so that reading the names (in the YAML check, in the CLI's
choices) imports neither torch nor ray. Adding a backend is one module plus one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from fedseg.runners.site import SiteTrainer


@dataclass(frozen=True)
class TrainOptions:
    """What ``fedseg train`` asks of a backend's runner; a backend refuses what it cannot do."""

    epochs: int
    val_every: int = 1
    seed: int = 0
    tracking: str | None = None
    init_weights: Mapping | None = None  # a pretrained start (fedseg.checkpoint.load_initial_model)
    device: str | None = None
    threads: int | None = None
    precision: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    address: str | None = None
    resume: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    site_trainer: str  # "module:Class" built as Class(site_data, runtime, seed=seed)
    runner: str  # "module:function" called as function(spec, sites, out_dir, options: TrainOptions)
    extra: str | None = None  # the pip extra it needs (pip install 'fedseg[extra]')

    def load(self, what: str) -> Callable:
        module, _, attr = getattr(self, what).partition(":")
        return getattr(importlib.import_module(module), attr)


BACKENDS: dict[str, Backend] = {
    "local": Backend("local", "in this process", "fedseg.runners.site:LocalSiteTrainer",
                     "fedseg.runners.local:run_backend"),
    "ray": Backend("ray", "data-parallel on the site's own Ray cluster (Ray Train, DDP)",
                   "fedseg.ray.trainer:RaySiteTrainer", "fedseg.ray.runner:run_backend", extra="ray"),
}


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def make_site_trainer(data, runtime, seed: int = 0) -> "SiteTrainer":
    """The FL site trainer the site's YAML asks for (``backend:``)."""
    return get_backend(data.site.backend).load("site_trainer")(data, runtime, seed=seed)
