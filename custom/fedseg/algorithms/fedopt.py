"""FedOpt (Reddi et al. 2021): the averaged update applied by a server-side optimizer.

NVFlare's ModelController-based ``FedOpt`` (SGD with momentum on the server, weight
differences from the sites), under fedseg's round rules; sites train as in FedAvg.
"""

from __future__ import annotations

from fedseg.algorithms.base import PRIVACY, Algorithm, Option


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
        from fedseg.flare.controller import ConsortiumFedOpt
        from fedseg.networks import TaskNetwork

        values = self.values(dict(job.algorithm_options))
        # "config_type": "dict" keeps NVFlare's config builder from instantiating these at load time
        # (FedOpt builds them itself, around the model's parameters).
        return ConsortiumFedOpt(
            source_model=TaskNetwork(**job.network_args),
            optimizer_args={"path": "torch.optim.SGD",
                            "args": {"lr": values["server_lr"], "momentum": values["server_momentum"]},
                            "config_type": "dict"},
            lr_scheduler_args={"path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                               "args": {"T_max": 3, "eta_min": 0.9}, "config_type": "dict"},  # NVFlare's default
            **common)


ALGORITHM = FedOpt()
