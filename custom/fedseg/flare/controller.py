"""NVFlare's FedAvg, configured for hospital consortia that lose a site now and then.

Two behaviours of the stock recipe do not suit a consortium:

* ``FedAvgRecipe`` passes its ``min_clients`` as FedAvg's ``num_clients``, so with more sites
  connected than the minimum, only a random subset trains each round. Here every connected site
  trains every round; ``min_clients`` stays what its name says, the minimum.
* FedAvg expects a result from every site it asked; one site failing aborts the whole job. Here a
  failed site's result is ignored (NVFlare's ``ignore_result_error=True``) and the round is averaged
  over the sites that delivered, as long as at least ``min_clients`` did; below that the job stops
  with a message saying so.

Aggregation itself is NVFlare's own (weighted by each site's ``NUM_STEPS_CURRENT_ROUND``).
"""

from __future__ import annotations

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg


class ConsortiumFedAvg(FedAvg):
    """FedAvg over all connected sites that tolerates failed sites down to ``min_clients``."""

    def __init__(self, *args, min_clients: int = 1, **kwargs):
        kwargs["num_clients"] = 0  # 0: every connected client, every round
        kwargs["ignore_result_error"] = True
        super().__init__(*args, **kwargs)
        if min_clients < 1:
            raise ValueError(f"min_clients must be at least 1, got {min_clients}")
        self.min_clients = min_clients
        self._targets: list[str] = []

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        self._targets = super().sample_clients(num_clients)
        return self._targets

    def _get_aggregated_result(self) -> FLModel:
        delivered = sorted(self._site_metric_weights)
        missing = sorted(set(self._targets) - set(delivered))
        if self._received_count < self.min_clients:
            msg = (f"fedseg: round {self.current_round}: only {self._received_count} usable site update(s) "
                   f"({', '.join(delivered) or 'none'}; failed: {', '.join(missing) or 'none'}), fewer than the "
                   f"job's minimum of {self.min_clients}; stopping the job")
            self.panic(msg)
            raise RuntimeError(msg)
        if missing:
            self.warning(f"fedseg: round {self.current_round}: no usable update from {', '.join(missing)}; "
                         f"averaging {', '.join(delivered)}")
        return super()._get_aggregated_result()
