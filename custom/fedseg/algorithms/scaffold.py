"""SCAFFOLD (Karimireddy et al. 2020): control variates that correct each site's drift.

Server: :class:`ConsortiumScaffold` (NVFlare's FedAvg under fedseg's
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
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg

from fedseg.algorithms.base import Algorithm, RoundOutput, SiteAlgorithm
from fedseg.engine.hooks import RoundHooks, TrainHooks
from fedseg.errors import FedsegError
from fedseg.flare.constants import CTRL_DIFF, CTRL_GLOBAL, NUM_STEPS
from fedseg.flare.controller import ConsortiumRounds
from fedseg.flare.guard import Reference, describe, name_list, update_problems


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


class ConsortiumScaffold(ConsortiumRounds, FedAvg):
    """SCAFFOLD on NVFlare's FedAvg under fedseg's round rules (deadlines, lost sites, resume).

    NVFlare's own ``Scaffold`` workflow waits for every site without a deadline and raises on a
    withheld update, so the SCAFFOLD parts are added here instead, with NVFlare's pieces and
    formula (``scaffold_aggregate_fn``): the global controls go out in every training task's
    meta; each site's control difference is averaged with the same weight as its update and
    added to the global controls. A non-empty update without a control difference is left out of
    the round. Rounds with sites missing average the controls of the sites that delivered (NVFlare's
    weighted mean, not the paper's |S|/N scaling). The controls live in server memory: a resumed
    job starts them from zero (logged).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._controls: dict | None = None
        self._ctrl_helper = None
        self._round_diff: dict | None = None

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

        self._ctrl_helper = WeightedAggregationHelper()
        return super().sample_clients(num_clients)

    def send_model(self, task_name: str = "train", data: FLModel | None = None, targets=None,
                   min_responses: int | None = None, timeout: int = 0, callback=None) -> None:
        if data is not None and task_name == self.task_name:
            if self._controls is None:
                import numpy as np

                self._controls = {k: np.zeros_like(np.asarray(v), dtype=np.float32) for k, v in data.params.items()}
                if self.start_round:
                    self.warning(f"fedseg: SCAFFOLD resumes at round {self.start_round} with its control "
                                 "variates at zero (they are not saved with the global model)")
            data.meta = dict(data.meta or {}, **{CTRL_GLOBAL: self._controls})
        super().send_model(task_name=task_name, data=data, targets=targets, min_responses=min_responses,
                           timeout=timeout, callback=callback)

    def _aggregate_one_result(self, result: FLModel) -> bool:
        meta = result.meta or {}
        if result.params and CTRL_DIFF not in meta:
            site = meta.get("client_name", "unknown site")
            if self._round is not None:
                self._round.withheld[site] = "no SCAFFOLD control difference in the update"
            self.warning(f"fedseg: {site}'s update carries no SCAFFOLD control difference; left out of the round")
            return False
        accepted = super()._aggregate_one_result(result)
        if accepted:
            site = meta.get("client_name", "unknown site")
            weight = (self.aggregation_weights or {}).get(site, 1.0) * float(meta.get(NUM_STEPS, 1.0))
            self._ctrl_helper.add(data=meta[CTRL_DIFF], weight=weight, contributor_name=site,
                                  contribution_round=self.current_round)
        return accepted

    def _get_aggregated_result(self) -> FLModel:
        self._round_diff = self._ctrl_helper.get_result()  # read once: the helper resets itself
        result = super()._get_aggregated_result()
        # NVFlare's scaffold_aggregate_fn puts the mean control difference here too.
        result.meta[CTRL_DIFF] = self._round_diff
        return result

    def _round_info(self) -> dict:
        import numpy as np

        norm = float(np.sqrt(sum(float(np.sum(np.square(v))) for v in (self._round_diff or {}).values())))
        return {"scaffold_control_difference_norm": round(norm, 6)}

    def update_model(self, global_model: FLModel, aggr_result: FLModel) -> FLModel:
        model = super().update_model(global_model, aggr_result)
        self.add_control_difference(aggr_result.meta[CTRL_DIFF])
        (model.meta or {}).pop(CTRL_DIFF, None)  # not sent back out with the next round's model
        return model

    def add_control_difference(self, diff: dict) -> None:
        """The global controls grow by the round's mean control difference (``Scaffold._run_rounds``)."""
        for name, delta in diff.items():
            if name in self._controls:
                self._controls[name] = self._controls[name] + delta


def control_problems(controls, reference: Reference | None) -> list[str]:
    """Why a SCAFFOLD control difference must not be averaged: it is added to the global controls
    every later round starts from, so one NaN would poison them all. Its keys are a subset of the
    model's (trainable parameters only), each of the model's shape."""
    if not isinstance(controls, dict) or not controls:
        return ["its SCAFFOLD control difference is not a mapping of tensors"]
    described = {k: describe(v) for k, v in controls.items()}
    found = [f"SCAFFOLD control {p}" for p in update_problems(controls, None)]
    if reference is not None:
        unknown = sorted(k for k in described if k not in reference.variables)
        if unknown:
            found.append(f"{len(unknown)} SCAFFOLD control(s) for variables the global model does not have: "
                         f"{name_list(unknown)}")
        shapes = [f"{k} {list(v.shape)} (expected {list(reference.variables[k].shape)})"
                  for k, v in sorted(described.items())
                  if v is not None and k in reference.variables and v.shape != reference.variables[k].shape]
        if shapes:
            found.append(f"{len(shapes)} SCAFFOLD control(s) of another shape: {name_list(shapes)}")
    return found


class Scaffold(Algorithm):
    name = "scaffold"
    summary = "FedAvg with SCAFFOLD control variates correcting each site's drift (NVFlare's PTScaffoldHelper)"
    # Control differences travel as meta, which NVFlare's privacy filters never touch: refuse them.
    privacy = ("none",)
    resume_note = "the control variates (server and sites) start again from zero"
    site_class = ScaffoldSite

    def controller(self, job, **common):
        return ConsortiumScaffold(**common)

    def update_problems(self, meta, reference):
        # An update without controls is the controller's to leave out (it names the site).
        controls = meta.get(CTRL_DIFF)
        return [] if controls is None else control_problems(controls, reference)


ALGORITHM = Scaffold()
