"""FL algorithms as plug-ins: one module each, found by name here.

Every consumer reads this one registry: ``fedseg jobs export --algorithm``, ``fedseg simulate
--algorithm``, the job generator (:mod:`fedseg.flare.jobs`) and the site client
(:mod:`fedseg.flare.client`). Adding an algorithm is one module declaring ``ALGORITHM`` (an
:class:`fedseg.algorithms.base.Algorithm`) plus one line below. Listing the names imports neither
nvflare nor torch; an algorithm's module is imported when it is first asked for (those with their
own server controller, SCAFFOLD and FedOpt, import NVFlare then).
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedseg.algorithms.base import Algorithm

_MODULES = {
    "fedavg": "fedseg.algorithms.fedavg",
    "fedprox": "fedseg.algorithms.fedprox",
    "fedopt": "fedseg.algorithms.fedopt",
    "scaffold": "fedseg.algorithms.scaffold",
    "ditto": "fedseg.algorithms.ditto",
}


def algorithm_names() -> tuple[str, ...]:
    return tuple(_MODULES)


def get_algorithm(name: str) -> "Algorithm":
    """The algorithm registered as ``name``, or a ``ValueError`` listing the known ones."""
    try:
        module = _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(_MODULES)}") from None
    return importlib.import_module(module).ALGORITHM


def algorithm_option(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` on a command line (argparse type); the algorithm checks the name and the range."""
    name, sep, value = text.partition("=")
    try:
        if not (name and sep):
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an algorithm option is NAME=NUMBER (e.g. mu=0.01), got {text!r}") from None


__all__ = ["algorithm_names", "algorithm_option", "get_algorithm"]
