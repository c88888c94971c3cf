"""What an FL algorithm may add to a site's local training, in one object the engine calls.

The engine knows nothing of FedProx, SCAFFOLD or Ditto: it adds ``loss_term(network)`` to every
step's loss and calls ``after_step(network, lr)`` after every optimizer step. Algorithms build
these (see :mod:`fedseg.algorithms`), so adding one touches no engine code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TrainHooks:
    """``loss_term``: added to each step's loss (e.g. a proximal term); inside autocast, before backward.
    ``after_step``: called after each optimizer step with the learning rate that step used
    (e.g. SCAFFOLD's control-variate correction). Both receive the bare network, never a DDP wrapper.
    """

    loss_term: Callable[[torch.nn.Module], torch.Tensor] | None = None
    after_step: Callable[[torch.nn.Module, float], None] | None = None


NO_HOOKS = TrainHooks()


class RoundHooks:
    """What an algorithm adds to one round of a site's training, wherever that training runs.

    A site trainer calls :meth:`build` in the process that trains (the client itself, or every
    Ray worker: so subclasses must pickle, holding tensors and numbers only), trains with the
    hooks, then calls :meth:`finish` there and hands its dictionary back as
    ``TrainResult.extras`` (from rank 0 on Ray). The base class adds nothing.
    """

    def build(self, engine) -> TrainHooks:
        return NO_HOOKS

    def finish(self, engine) -> dict:
        return {}
