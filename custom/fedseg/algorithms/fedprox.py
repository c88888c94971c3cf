"""FedProx (Li et al. 2020): FedAvg plus a proximal term pulling each site towards the global model.

The server sends ``mu`` in every training task's meta, as NVFlare's FedProx recipe does
(``FedAvg(fedprox_mu=...)``); each site adds NVFlare's ``PTFedProxLoss(mu)`` against the model
it received to every step's loss, wherever it trains (in process or on every Ray worker).
"""

from __future__ import annotations

import logging
from typing import Mapping

from fedseg.algorithms.base import Algorithm, Option, SiteAlgorithm
from fedseg.engine.hooks import RoundHooks, TrainHooks

log = logging.getLogger("fedseg")


class ProximalHooks(RoundHooks):
    """``mu/2 * ||w - w_ref||^2`` added to every step's loss; ``reference`` are the weights to stay near."""

    def __init__(self, reference: Mapping, mu: float):
        from fedseg.engine.engine import to_state_dict

        self.reference = {k: v.detach().cpu() for k, v in to_state_dict(reference).items()}
        self.mu = float(mu)

    def build(self, engine) -> TrainHooks:
        from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

        from fedseg.networks import build_network

        reference = build_network(engine.spec).to(engine.runtime.device)
        reference.load_state_dict(self.reference)
        reference.requires_grad_(False)
        proximal = PTFedProxLoss(mu=self.mu)
        return TrainHooks(loss_term=lambda network: proximal(network, reference))


class FedProxSite(SiteAlgorithm):
    def hooks(self, params, meta):
        from nvflare.app_common.app_constant import AlgorithmConstants

        mu = (meta or {}).get(AlgorithmConstants.FEDPROX_MU)
        if not mu:
            return None
        # The server's mu: it is the job's setting.
        log.info("fedseg: this round trains with FedProx's proximal term, mu %g", float(mu))
        return ProximalHooks(params, float(mu))


class FedProx(Algorithm):
    name = "fedprox"
    summary = "FedAvg with a proximal term mu/2 ||w - w_global||^2 in every site's loss"
    options = (Option("mu", 0.01, 1e-6, 10.0, "weight of the proximal term"),)
    site_class = FedProxSite

    def controller(self, job, **common):
        from fedseg.flare.controller import ConsortiumFedAvg

        return ConsortiumFedAvg(fedprox_mu=self.values(dict(job.algorithm_options))["mu"], **common)


ALGORITHM = FedProx()
