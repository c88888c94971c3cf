"""FedOpt (Reddi et al. 2021): the averaged update applied by a server-side optimizer.

NVFlare's ModelController-based ``FedOpt`` (SGD with momentum on the server, weight
differences from the sites), under fedseg's round rules; sites train as in FedAvg.
"""

from __future__ import annotations

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_opt.pt.fedopt_ctl import FedOpt as NVFlareFedOpt

from fedseg.algorithms.base import PRIVACY, Algorithm, Option
from fedseg.flare.controller import ConsortiumRounds


class ConsortiumFedOpt(ConsortiumRounds, NVFlareFedOpt):
    """NVFlare's FedOpt controller (server optimizer on the averaged update) with fedseg's round rules."""

    # Written into the job even when equal to NVFlare's defaults: the job says which optimizer runs.
    _always_serialize_args = ("optimizer_args", "lr_scheduler_args")

    def __init__(self, *args, device: str | None = None, **kwargs):
        super().__init__(*args, device=device, **kwargs)
        # Kept as given (None: the CPU) rather than as a torch.device: NVFlare's job exporter writes
        # constructor arguments back from attributes and cannot write a torch.device.
        self.device = device

    def update_model(self, global_model: FLModel, aggr_result: FLModel) -> FLModel:
        # The server optimizer steps its own copy of the network; load the current global model into
        # it first, so a job started from a checkpoint (or resumed) steps from the right weights.
        import torch

        if self.torch_model is not None and global_model.params:
            state = {k: torch.as_tensor(v) for k, v in global_model.params.items()}
            self.torch_model.load_state_dict(state, strict=False)
        return super().update_model(global_model, aggr_result)


class FedOpt(Algorithm):
    name = "fedopt"
    summary = "server-side SGD with momentum on the averaged update (NVFlare's FedOpt)"
    options = (Option("server_lr", 1.0, 1e-4, 10.0, "the server optimizer's learning rate"),
               Option("server_momentum", 0.6, 0.0, 0.99, "the server optimizer's momentum"))
    # Its server optimizer steps every variable: one that never arrives (privacy "exclude") cannot be stepped.
    privacy = tuple(p for p in PRIVACY if p != "exclude")

    def transfer_type(self, job) -> str:
        return "DIFF"

    def controller(self, job, **common):
        from fedseg.networks import TaskNetwork

        values = self.values(dict(job.algorithm_options))
        # "config_type": "dict" keeps NVFlare's config builder from instantiating these at load time
        # (FedOpt builds them itself, around the model's parameters).
        return ConsortiumFedOpt(
            source_model=TaskNetwork(**job.network_args),
            optimizer_args={"path": "torch.optim.SGD",
                            "args": {"lr": values["server_lr"], "momentum": values["server_momentum"]},
                            "config_type": "dict"},
            # NVFlare's default schedule (T_max 3, eta_min 0.9) is written for its default lr 1.0, and eta_min
            # is absolute: with server_lr 0.5 the rate would climb to 0.9, with 2.0 fall to 0.9. Keep its shape
            # (down to 90 % of the rate and back) for every server_lr.
            lr_scheduler_args={"path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                               "args": {"T_max": 3, "eta_min": 0.9 * values["server_lr"]}, "config_type": "dict"},
            **common)


ALGORITHM = FedOpt()
