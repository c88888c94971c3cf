"""The server-side guard drops withheld, non-finite and ill-fitting updates and lets good ones through.

The guard runs on real NVFlare objects: DXO, Shareable, an FL context from NVFlare's own context
manager, and the PTFileModelPersistor a job declares (only the engine that hands out components
is a stand-in).
"""

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from fedseg.flare.guard import WITHHELD, UpdateGuard
from fedseg.networks import NORM_LAYERS, TaskNetwork

REPO = Path(__file__).resolve().parents[1]
FAULT_CLIENT = Path(__file__).parent / "faults" / "fault_client.py"


def _run(dxo, fl_ctx=None):
    return UpdateGuard().process_dxo(dxo, Shareable(), fl_ctx or FLContext())


class _Engine:
    """Hands out the server's components by id, as NVFlare's server engine does."""

    def __init__(self, **components):
        self.components = components
        self.events = []

    def get_component(self, component_id):
        return self.components.get(component_id)

    def fire_event(self, event_type, fl_ctx):
        self.events.append(event_type)


def _server_context(site: str = "site-3", **props) -> FLContext:
    network = TaskNetwork("spleen", "tiny")
    persistor = PTFileModelPersistor(model=network) if "persistor" not in props else props.pop("persistor")
    fl_ctx = FLContextManager(engine=_Engine(persistor=persistor), identity_name="server").new_context()
    for key, value in props.items():
        fl_ctx.set_prop(key, value, private=True, sticky=False)
    peer = FLContext()
    peer.set_prop("__identity_name__", site, private=False, sticky=False)
    fl_ctx.set_peer_context(peer)
    return fl_ctx


def _state(kind: str = "numpy") -> dict:
    state = TaskNetwork("spleen", "tiny").state_dict()
    return {k: v.numpy().copy() for k, v in state.items()} if kind == "numpy" else dict(state)


def _refused(data, caplog, fl_ctx=None, kind=DataKind.WEIGHTS) -> str:
    with caplog.at_level(logging.WARNING):
        out = _run(DXO(kind, data=data), fl_ctx or _server_context())
    assert out is not None and out.data == {}, "the update was let through"
    return caplog.text


def test_good_update_passes_untouched():
    assert _run(DXO(DataKind.WEIGHTS, data={"w": np.ones(3, np.float32)})) is None


def test_non_finite_update_is_emptied():
    out = _run(DXO(DataKind.WEIGHTS, data={"w": np.array([1.0, math.nan], np.float32), "b": np.ones(2)}))
    assert out is not None and out.data == {}


FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64, np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_caught_in_every_float_type(dtype, bad):
    make = torch.full if isinstance(dtype, torch.dtype) else np.full
    out = _run(DXO(DataKind.WEIGHTS, data={"w": make((4, 4), bad, dtype=dtype)}))
    assert out is not None and out.data == {}
    assert _run(DXO(DataKind.WEIGHTS, data={"w": make((4, 4), 0.5, dtype=dtype)})) is None


def test_values_that_are_not_arrays_of_real_numbers_are_refused(caplog):
    for value in ([1.0, math.nan], "0.5", np.ones(3, np.complex64), np.array([None, 1.0], dtype=object)):
        out = _run(DXO(DataKind.WEIGHTS, data={"w": value}))
        assert out is not None and out.data == {}, value


def test_withheld_update_is_emptied():
    dxo = DXO(DataKind.METRICS, data={"val_dice": 0.5}, meta={WITHHELD: "non-finite loss (nan)"})
    assert _run(dxo).data == {}


def test_metrics_may_hold_nan():
    # A validation result with a class no case has (NaN) is not an update: it must pass.
    assert _run(DXO(DataKind.METRICS, data={"val_dice_tumour": math.nan})) is None


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("data_kind", [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF])
def test_update_of_the_declared_network_passes(kind, data_kind):
    assert _run(DXO(data_kind, data=_state(kind)), _server_context()) is None


def test_update_without_exactly_the_normalization_layers_passes():
    # privacy "exclude" (ExcludeVars with every normalization variable) keeps them at the site
    update = {k: v for k, v in _state().items() if not re.search(NORM_LAYERS, k)}
    assert len(update) < len(_state())
    assert _run(DXO(DataKind.WEIGHT_DIFF, data=update), _server_context()) is None


def test_counters_sent_as_floats_pass():
    # FedAvg's average and NVFlare's weight differences turn num_batches_tracked into floats
    update = {k: v.astype(np.float64) if v.dtype.kind == "i" else v for k, v in _state().items()}
    assert _run(DXO(DataKind.WEIGHT_DIFF, data=update), _server_context()) is None


def _first_conv(state: dict) -> str:
    return next(k for k, v in state.items() if v.ndim == 5)


def test_missing_variable_is_refused_naming_the_site(caplog):
    update = _state()
    key = _first_conv(update)
    del update[key]
    text = _refused(update, caplog, _server_context("site-3"))
    assert "update from site-3" in text and key in text and "missing" in text


def test_only_part_of_the_normalization_layers_missing_is_refused(caplog):
    update = _state()
    del update[next(k for k in update if re.search(NORM_LAYERS, k))]
    assert "missing" in _refused(update, caplog)


def test_unknown_variable_is_refused(caplog):
    update = {**_state(), "backdoor.weight": np.zeros(3, np.float32)}
    text = _refused(update, caplog)
    assert "backdoor.weight" in text and "does not have" in text


def test_wrong_shape_is_refused(caplog):
    update = _state()
    key = _first_conv(update)
    update[key] = np.zeros((1,) + update[key].shape[1:], np.float32)
    text = _refused(update, caplog, kind=DataKind.WEIGHT_DIFF)
    assert key in text and "another shape" in text


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_wrong_float_precision_is_refused(dtype, caplog):
    update = _state("torch")
    key = _first_conv(update)
    update[key] = update[key].to(dtype)
    text = _refused(update, caplog)
    assert key in text and "another type" in text and str(dtype).removeprefix("torch.") in text


def test_bf16_update_full_of_nan_is_refused(caplog):
    update = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _state("torch").items()}
    update[_first_conv(update)].fill_(math.nan)
    assert "NaN or infinite" in _refused(update, caplog)


def test_global_model_in_the_context_is_the_reference_without_a_declared_network(caplog):
    glob = _state()
    # after a FedAvg round the counters of the global model are floats
    glob = {k: v.astype(np.float64) if v.dtype.kind == "i" else v for k, v in glob.items()}
    context = dict(persistor=None, **{AppConstants.GLOBAL_MODEL: make_model_learnable(glob, {})})
    assert _run(DXO(DataKind.WEIGHTS, data=_state()), _server_context(**context)) is None
    update = _state()
    key = _first_conv(update)
    update[key] = update[key][:1]
    assert "another shape" in _refused(update, caplog, _server_context(**context))
    update = _state()
    update[key] = update[key].astype(np.float16)
    assert "another type" in _refused(update, caplog, _server_context(**context))


def test_committed_jobs_give_the_guard_its_reference():
    # The guard reads the network from the server's "persistor" component: every job must have one.
    for config in sorted(REPO.glob("jobs/*/app/config/config_fed_server.json")):
        server = json.loads(config.read_text())
        ids = {c["id"]: c for c in server["components"]}
        assert ids[AppConstants.DEFAULT_PERSISTOR_ID]["args"]["model"]["path"] == "fedseg.networks.TaskNetwork", config
        filters = [f["path"] for group in server["task_result_filters"] for f in group["filters"]]
        assert "fedseg.flare.guard.UpdateGuard" in filters, config


@pytest.mark.slow
@pytest.mark.parametrize("privacy, fault", [("exclude", "extra_key"), ("none", "half")])
def test_guard_in_a_simulator_run(privacy, fault, tmp_path, monkeypatch):
    # A real job: legitimate updates (full, or without the normalization layers) pass the guard;
    # site-2's ill-fitting one is refused, naming the site. Weight differences passing it is checked
    # on the percentile-privacy job of test_simulator_resume_privacy (there the Client API itself
    # drops unknown keys and computes in the global model's precision, so no fault can be injected).
    from fedseg.data.synth import synthesize
    from fedseg.flare.jobs import JobSpec
    from fedseg.flare.simulate import simulate

    data = tmp_path / "data"
    synthesize("spleen", data, cases=8, seed=7, workers=1)
    monkeypatch.setenv("FEDSEG_TEST_FAULT", f"site-2:{fault}:0")
    job = JobSpec("spleen", num_rounds=2, local_epochs=1, privacy=privacy, min_clients=1)
    run = tmp_path / "run"
    simulate(job, n_sites=2, data_dir=data, run_dir=run, cases=8, client_script=FAULT_CLIENT,
             report=False)
    log = (run / "simulator.log").read_text()
    refused = re.findall(r"fedseg: update from (site-\d) in round (\d+) excluded from the average: ([^\n]*)", log)
    assert {(site, rnd) for site, rnd, _ in refused} == {("site-2", "0"), ("site-2", "1")}, refused
    assert all(("injected.weight" if fault == "extra_key" else "float16") in why for _, _, why in refused)
