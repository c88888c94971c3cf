"""Server-side guard on incoming training results (an NVFlare task-result filter).

A site whose loss went non-finite withholds its update and says why in the result's meta; an
update that nevertheless carries NaN or infinite values, or whose variables do not fit the
global model, is emptied here. Either way the server log names the site and the round, and
NVFlare's FedAvg skips the empty result, so one bad site never poisons the global model.

What an update (``WEIGHTS`` or ``WEIGHT_DIFF``) must be:

* every value a PyTorch tensor or NumPy array of real numbers; floating-point values (fp16,
  bf16, fp32, fp64, torch or NumPy alike) all finite;
* its keys those of the global model: no unknown key ever; a missing key only when exactly the
  normalization layers are missing (privacy ``exclude`` keeps them at the site, see
  :data:`fedseg.networks.NORM_LAYERS`), and nothing else;
* each shape the global model's; a floating-point variable of the global model's precision
  (an fp32 weight sent as fp16 or fp64 is refused). Integer variables (BatchNorm's
  ``num_batches_tracked``) may arrive as integers or floats: NVFlare's weighted average and its
  weight differences turn those counters into floats.

The global model's variables come from the network the job declares (the server's
``persistor`` component builds it, ``fedseg.networks.TaskNetwork``); when there is none, from the
global model NVFlare keeps in the FL context (``AppConstants.GLOBAL_MODEL``), whose counters may
already be floats, so there an integer is accepted where it holds a float.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from fedseg.algorithms import get_algorithm
from fedseg.flare.constants import WITHHELD
from fedseg.networks import NORM_LAYERS

_SHOWN = 5  # keys named per problem in the log


@dataclass(frozen=True)
class Variable:
    """Shape and element type of one model variable, for torch and NumPy alike."""

    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", "int64" ...
    kind: str  # "float", "int", "bool" or what else it is ("complex", "object" ...)


def describe(value) -> Variable | None:
    """Shape and type of a tensor or array; None for anything else (a list, a string, None)."""
    if isinstance(value, torch.Tensor):
        dtype = value.dtype
        kind = ("float" if dtype.is_floating_point else "complex" if dtype.is_complex
                else "bool" if dtype == torch.bool else "int")
        return Variable(tuple(value.shape), str(dtype).removeprefix("torch."), kind)
    if isinstance(value, (np.ndarray, np.generic)):
        dtype = np.asarray(value).dtype
        kind = {"f": "float", "i": "int", "u": "int", "b": "bool", "c": "complex"}.get(dtype.kind, dtype.name)
        return Variable(tuple(np.shape(value)), dtype.name, kind)
    return None


def is_finite(value) -> bool:
    """True when every element of a float tensor or array is finite (integers always are)."""
    if isinstance(value, torch.Tensor):
        return not value.dtype.is_floating_point or bool(torch.isfinite(value).all())
    array = np.asarray(value)
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


@dataclass(frozen=True)
class Reference:
    """The global model's variables; ``exact`` when taken from the declared network."""

    variables: dict[str, Variable]
    exact: bool
    source: str

    @classmethod
    def from_weights(cls, weights, *, exact: bool, source: str) -> "Reference":
        described = {k: describe(v) for k, v in weights.items()}
        return cls({k: v for k, v in described.items() if v is not None}, exact, source)

    def problems(self, update: dict[str, Variable]) -> list[str]:
        """What keeps ``update`` from fitting this model (empty: it fits)."""
        found = []
        unknown = sorted(set(update) - set(self.variables))
        if unknown:
            found.append(f"{len(unknown)} variable(s) the global model does not have: {name_list(unknown)}")
        missing = sorted(set(self.variables) - set(update))
        normalization = sorted(k for k in self.variables if re.search(NORM_LAYERS, k))
        if missing and missing != normalization:
            found.append(f"{len(missing)} variable(s) of the global model missing: {name_list(missing)} (only the "
                         f"normalization layers, all of them, may be kept at a site)")
        shapes = [f"{k} {list(v.shape)} (expected {list(self.variables[k].shape)})"
                  for k, v in sorted(update.items()) if k in self.variables and v.shape != self.variables[k].shape]
        if shapes:
            found.append(f"{len(shapes)} variable(s) of another shape: {name_list(shapes)}")
        dtypes = [f"{k} {v.dtype} (expected {self.variables[k].dtype})" for k, v in sorted(update.items())
                  if k in self.variables and not self._dtype_fits(v, self.variables[k])]
        if dtypes:
            found.append(f"{len(dtypes)} variable(s) of another type: {name_list(dtypes)}")
        return found

    def _dtype_fits(self, got: Variable, expected: Variable) -> bool:
        if expected.kind == "float":
            return got.dtype == expected.dtype or (got.kind == "int" and not self.exact)
        if expected.kind == "int":
            return got.kind in ("int", "float")  # averaged or differenced counters become floats
        return got.dtype == expected.dtype


def name_list(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def global_reference(fl_ctx: FLContext) -> Reference | None:
    """The global model's variables: from the job's declared network, else from the FL context."""
    engine = fl_ctx.get_engine()
    persistor = engine.get_component(AppConstants.DEFAULT_PERSISTOR_ID) if hasattr(engine, "get_component") else None
    model = getattr(persistor, "model", None)
    if isinstance(model, torch.nn.Module):
        return Reference.from_weights(model.state_dict(), exact=True, source="the job's network")
    learnable = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    weights = learnable.get(ModelLearnableKey.WEIGHTS) if isinstance(learnable, dict) else None
    if isinstance(weights, dict) and weights:
        return Reference.from_weights(weights, exact=False, source="the global model")
    return None


def update_problems(data: dict, reference: Reference | None) -> list[str]:
    """Why an update must not be averaged (empty: it may be)."""
    described = {k: describe(v) for k, v in data.items()}
    not_numbers = sorted(f"{k} ({type(data[k]).__name__})" for k, v in described.items()
                         if v is None or v.kind not in ("float", "int", "bool"))
    if not_numbers:
        return [f"{len(not_numbers)} value(s) are not tensors or arrays of real numbers: {name_list(not_numbers)}"]
    found = []
    non_finite = sorted(k for k, v in data.items() if not is_finite(v))
    if non_finite:
        found.append(f"{len(non_finite)} tensor(s) hold NaN or infinite values: {name_list(non_finite)}")
    if reference is not None:
        found += reference.problems(described)
    return found


class UpdateGuard(DXOFilter):
    """Drop withheld, non-finite or ill-fitting training updates before they reach the aggregator.

    Install it on the server for the ``train`` task only (cross-site validation results are metrics).
    """

    def __init__(self, algorithm: str = "fedavg"):
        super().__init__(supported_data_kinds=[], data_kinds_to_filter=[])
        self.algorithm = algorithm  # its own checks of what else an update carries (SCAFFOLD's controls)

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
        data = dxo.data if isinstance(dxo.data, dict) else {}
        reference = global_reference(fl_ctx)
        problems = update_problems(data, reference)
        problems += get_algorithm(self.algorithm).update_problems(dxo.meta or {}, reference)
        if problems:
            self.log_warning(fl_ctx, f"fedseg: update from {site} in round {current_round} excluded from the "
                                     f"average: " + "; ".join(problems))
            dxo.data = {}
            return dxo
        return None
