"""The server-side guard drops withheld and non-finite updates and lets good ones through."""

import math

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fedseg.flare.guard import WITHHELD, UpdateGuard


def _run(dxo):
    return UpdateGuard().process_dxo(dxo, Shareable(), FLContext())


def test_good_update_passes_untouched():
    assert _run(DXO(DataKind.WEIGHTS, data={"w": np.ones(3, np.float32)})) is None


def test_non_finite_update_is_emptied():
    out = _run(DXO(DataKind.WEIGHTS, data={"w": np.array([1.0, math.nan], np.float32), "b": np.ones(2)}))
    assert out is not None and out.data == {}


def test_withheld_update_is_emptied():
    dxo = DXO(DataKind.METRICS, data={"val_dice": 0.5}, meta={WITHHELD: "non-finite loss (nan)"})
    assert _run(dxo).data == {}


def test_metrics_may_hold_nan():
    # A validation result with a class no case has (NaN) is not an update: it must pass.
    assert _run(DXO(DataKind.METRICS, data={"val_dice_tumour": math.nan})) is None
