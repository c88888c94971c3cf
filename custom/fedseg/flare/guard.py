"""Server-side guard on incoming training results (an NVFlare task-result filter).

A site whose loss went non-finite withholds its update and says why in the result's meta; an
update that nevertheless carries NaN or infinite values is emptied here. Either way the server
log names the site and the round, and NVFlare's FedAvg skips the empty result, so one bad site
never poisons the global model.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

# Meta key a client sets when it withholds its update, with the reason as value.
WITHHELD = "fedseg_withheld"


def _finite(value) -> bool:
    try:
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    except (TypeError, ValueError):
        return True  # not numeric: nothing to check
    return not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all())


class UpdateGuard(DXOFilter):
    """Drop withheld or non-finite training updates before they reach the aggregator.

    Install it on the server for the ``train`` task only (cross-site validation results are metrics).
    """

    def __init__(self):
        super().__init__(supported_data_kinds=[], data_kinds_to_filter=[])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else "unknown site"
        current_round = shareable.get_header(AppConstants.CURRENT_ROUND, fl_ctx.get_prop(AppConstants.CURRENT_ROUND))
        reason = dxo.get_meta_prop(WITHHELD)
        if reason:
            self.log_warning(fl_ctx, f"fedseg: update from {site} in round {current_round} excluded "
                                     f"from the average: {reason}")
            dxo.data = {}
            return dxo
        if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            return None  # metrics may legitimately hold NaN (a class no case has)
        bad = [k for k, v in (dxo.data or {}).items() if not _finite(v)]
        if bad:
            self.log_warning(fl_ctx, f"fedseg: update from {site} in round {current_round} excluded from the "
                                     f"average: {len(bad)} tensor(s) hold NaN or infinite values")
            dxo.data = {}
            return dxo
        return None
