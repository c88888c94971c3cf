"""SCAFFOLD (Karimireddy et al. 2020): control variates that correct each site's drift.

Server: :class:`fedseg.flare.controller.ConsortiumScaffold` (NVFlare's FedAvg under fedseg's
round rules, carrying the global controls in every task's meta and averaging the sites' control
differences as NVFlare's ``scaffold_aggregate_fn`` does). Sites: NVFlare's ``PTScaffoldHelper``
corrects the weights after every optimizer step (``model_update``) and updates the site's own
controls once after the round (``terms_update``, with the round's mean learning rate, as NVFlare's
Lightning integration does); the control difference travels in the update's meta.

The helper's derivation assumes plain SGD; with another optimizer (spleen's Novograd) the
correction is the same first-order approximation NVFlare applies.
"""

from __future__ import annotations

from typing import Mapping

import torch

from fedseg.algorithms.base import Algorithm, RoundOutput, SiteAlgorithm
from fedseg.engine.hooks import RoundHooks, TrainHooks
from fedseg.errors import FedsegError
from fedseg.flare.constants import CTRL_DIFF, CTRL_GLOBAL


def _cpu(values: Mapping) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).detach().cpu() for k, v in values.items()}


class _Weights:
    """The received global model as ``terms_update`` reads it (it only calls ``state_dict()``)."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self._weights = weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._weights


class ScaffoldHooks(RoundHooks):
    """One round's SCAFFOLD correction, built around ``PTScaffoldHelper`` where the training runs."""

    def __init__(self, global_weights: Mapping, c_global: Mapping, c_local: Mapping | None):
        self.global_weights = _cpu(global_weights)
        self.c_global = _cpu(c_global)
        self.c_local = _cpu(c_local) if c_local is not None else None

    def build(self, engine) -> TrainHooks:
        from nvflare.app_opt.pt.scaffold import PTScaffoldHelper

        helper = PTScaffoldHelper()
        helper.init(engine.network)  # the bare network: control keys are its parameter names
        helper.load_global_controls(self.c_global)
        if self.c_local is not None:
            helper.c_local.load_state_dict(self.c_local)
        c_global, c_local = helper.get_params()
        rates: list[float] = []

        def after_step(network, lr: float) -> None:
            helper.model_update(network, lr, c_global, c_local)
            rates.append(lr)

        self._round = (helper, c_global, c_local, rates)
        return TrainHooks(after_step=after_step)

    def finish(self, engine) -> dict:
        helper, c_global, c_local, rates = self._round
        helper.terms_update(engine.network, sum(rates) / len(rates), c_global, c_local, _Weights(self.global_weights))
        # Tensors only: a Ray worker's extras are read back with torch.load(weights_only=True).
        return {"c_local": _cpu(helper.c_local.state_dict()), "c_diff": _cpu(helper.get_delta_controls())}


class ScaffoldSite(SiteAlgorithm):
    """Keeps the site's control variates from round to round (in memory: a restarted site starts at zero)."""

    c_local: dict | None = None

    def train_round(self, trainer, params, meta, *, epochs, progress) -> RoundOutput:
        c_global = (meta or {}).get(CTRL_GLOBAL)
        if not c_global:
            raise FedsegError("the server sent no SCAFFOLD controls with the model: the job's server does not run "
                              "SCAFFOLD (export the job with --algorithm scaffold)")
        result = trainer.train(params, epochs, progress=progress, hooks=ScaffoldHooks(params, c_global, self.c_local))
        self.c_local = result.extras["c_local"]
        # NumPy arrays, as NVFlare's own SCAFFOLD clients send them (the server's controls are NumPy too).
        return RoundOutput(result, meta={CTRL_DIFF: {k: v.numpy() for k, v in result.extras["c_diff"].items()}})


class Scaffold(Algorithm):
    name = "scaffold"
    summary = "FedAvg with SCAFFOLD control variates correcting each site's drift (NVFlare's PTScaffoldHelper)"
    # Control differences travel as meta, which NVFlare's privacy filters never touch: refuse them.
    privacy = ("none",)
    resume_note = "the control variates (server and sites) start again from zero"
    site_class = ScaffoldSite

    def controller(self, job, **common):
        from fedseg.flare.controller import ConsortiumScaffold

        return ConsortiumScaffold(**common)


ALGORITHM = Scaffold()
