"""FL algorithms as plug-ins: the registry, each algorithm's site hooks and SCAFFOLD's server side.

The simulator runs of SCAFFOLD and Ditto (a Ray site and a local one) are in test_algorithms_sim.py.
"""

import numpy as np
import pytest
import torch

from fedseg.algorithms import algorithm_names, get_algorithm
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.engine.hooks import TrainHooks
from fedseg.flare.constants import CTRL_DIFF, CTRL_GLOBAL, NUM_STEPS
from fedseg.flare.jobs import JobSpec, export_job
from fedseg.site_config import load_site_config
from fedseg.site_data import open_site_data
from fedseg.tasks import get_task


def test_every_command_offers_the_registered_algorithms():
    from fedseg.cli import build_parser
    from fedseg.flare.client import parse_args

    parser = build_parser()
    for name in algorithm_names():
        assert get_algorithm(name).name == name
        assert parser.parse_args(["jobs", "export", "--task", "spleen", "--algorithm", name]).algorithm == name
        assert parser.parse_args(["simulate", "--algorithm", name]).algorithm == name
        assert parse_args(["--task", "spleen", "--algorithm", name]).algorithm == name
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--algorithm", "fedsgd"])
    with pytest.raises(ValueError, match="unknown algorithm 'fedsgd'; choose one of fedavg, fedprox, fedopt"):
        JobSpec("spleen", algorithm="fedsgd")


def test_nvflare_names_the_scaffold_controls_as_fedseg_does():
    from nvflare.app_common.app_constant import AlgorithmConstants

    assert (AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL, AlgorithmConstants.SCAFFOLD_CTRL_DIFF) == (CTRL_GLOBAL, CTRL_DIFF)


@pytest.mark.parametrize("job, message", [
    (dict(algorithm="fedprox", algorithm_options=(("mu", -1.0),)), r"fedprox option 'mu' must be a number from 1e-06"),
    (dict(algorithm="fedprox", algorithm_options=(("lr", 1.0),)), r"fedprox has no option 'lr' \(its options: mu\)"),
    (dict(algorithm="ditto", algorithm_options=(("epochs", 1.5),)), r"ditto option 'epochs' must be a whole number"),
    (dict(algorithm="scaffold", privacy="percentile"), r"privacy 'percentile' does not work with scaffold"),
    (dict(algorithm="fedopt", privacy="exclude"), r"privacy 'exclude' does not work with fedopt"),
])
def test_a_job_an_algorithm_cannot_run_is_refused(job, message):
    with pytest.raises(ValueError, match=message):
        JobSpec("spleen", **job)


def test_algorithm_options_reach_the_server_and_the_sites(tmp_path):
    import json

    def configs(job):
        d = export_job(job, tmp_path / job.algorithm)
        return (json.loads((d / "app/config/config_fed_server.json").read_text()),
                json.dumps(json.loads((d / "app/config/config_fed_client.json").read_text())))

    server, _ = configs(JobSpec("spleen", algorithm="fedprox", algorithm_options=(("mu", 0.5),)))
    assert server["workflows"][0]["args"]["fedprox_mu"] == 0.5
    server, _ = configs(JobSpec("spleen", algorithm="fedopt", algorithm_options=(("server_lr", 0.3),)))
    args = server["workflows"][0]["args"]
    assert args["optimizer_args"]["args"] == {"lr": 0.3, "momentum": 0.6}
    # NVFlare's schedule shape (down to 90 % of the rate and back) at any server_lr, never above it.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, **args["lr_scheduler_args"]["args"])
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert min(rates) == pytest.approx(0.27) and max(rates) == pytest.approx(0.3)
    server, client = configs(JobSpec("spleen", algorithm="scaffold"))
    assert server["workflows"][0]["path"] == "fedseg.algorithms.scaffold.ConsortiumScaffold"
    assert "--algorithm scaffold" in client
    _, client = configs(JobSpec("spleen", algorithm="ditto", algorithm_options=(("lambda", 0.5),)))
    assert "--algorithm ditto --algorithm-option lambda=0.5 --algorithm-option epochs=1" in client
    _, client = configs(JobSpec("spleen"))
    assert "--algorithm" not in client  # FedAvg's sites need no algorithm arguments


# Engine hooks -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(spleen_site):
    spec = get_task("spleen", "tiny")
    data = open_site_data(spec, load_site_config(spleen_site))
    return spec, data


def _engine(spec, data, seed=0):
    return SegmentationEngine(spec, Runtime.create("cpu", num_threads=2), class_names=data.class_names, seed=seed)


def test_hooks_add_to_the_loss_and_act_after_every_step(tiny):
    spec, data = tiny
    plain = _engine(spec, data)
    start = plain.get_weights()
    items = data.items("training")[:2]
    base = plain.train(plain.train_data(items), iterations=3, weights=start, progress=(0.0, 0.5))

    seen = []
    hooked = _engine(spec, data)
    hooks = TrainHooks(loss_term=lambda net: 5.0 + 0.0 * next(net.parameters()).sum(),
                       after_step=lambda net, lr: seen.append((net, lr)))
    result = hooked.train(hooked.train_data(items), iterations=3, weights=start, progress=(0.0, 0.5), hooks=hooks)
    # The constant term adds to every reported loss but not to the gradients: the same weights.
    assert result.epoch_losses[0] == pytest.approx(base.epoch_losses[0] + 5.0, rel=1e-5)
    assert all(torch.equal(result.weights[k], base.weights[k]) for k in base.weights)
    # after_step: once per step, with the bare network and the scheduled rate of that step.
    assert len(seen) == 3 and all(net is hooked.network for net, _ in seen)
    assert [lr for _, lr in seen] == pytest.approx([spec.lr_at(0.5 * i / 3) for i in range(3)])


def test_fedprox_hooks_pull_towards_the_received_model(tiny):
    from fedseg.algorithms.fedprox import ProximalHooks

    spec, data = tiny
    eng = _engine(spec, data)
    start = eng.get_weights()
    far = {k: v + 0.05 if v.dtype.is_floating_point else v for k, v in start.items()}
    term = ProximalHooks(far, mu=2.0).build(eng).loss_term(eng.network)
    params = dict(eng.network.named_parameters())
    expected = 0.5 * 2.0 * sum(float(((params[k].detach() - far[k]) ** 2).sum()) for k in params)
    assert float(term) == pytest.approx(expected, rel=1e-4)


def test_scaffold_hooks_do_what_nvflares_helper_does_by_hand(tiny):
    """The plug-in drives PTScaffoldHelper exactly as NVFlare's own integrations do (same weights, same delta)."""
    from nvflare.app_opt.pt.scaffold import PTScaffoldHelper

    from fedseg.algorithms.scaffold import ScaffoldHooks
    from fedseg.runners.site import LocalSiteTrainer

    spec, data = tiny
    trainer = LocalSiteTrainer(data, Runtime.create("cpu", num_threads=2), seed=3)
    start = trainer.engine.get_weights()
    names = [k for k, _ in trainer.engine.network.named_parameters()]
    rng = np.random.default_rng(0)
    c_global = {k: rng.normal(0, 1e-3, start[k].shape).astype(np.float32) for k in names}
    result = trainer.train(start, 1, progress=(0.0, 0.1), hooks=ScaffoldHooks(start, c_global, None))

    by_hand = LocalSiteTrainer(data, Runtime.create("cpu", num_threads=2), seed=3)
    eng = by_hand.engine
    helper = PTScaffoldHelper()
    helper.init(eng.network)
    helper.load_global_controls(c_global)
    cg, cl = helper.get_params()
    rates = []

    def after(net, lr):
        helper.model_update(net, lr, cg, cl)
        rates.append(lr)

    eng.set_weights(start)
    eng.train(eng.train_data(data.items("training")), epochs=1, progress=(0.0, 0.1),
              hooks=TrainHooks(after_step=after))
    global_net = _engine(spec, data).network
    global_net.load_state_dict(start)
    helper.terms_update(eng.network, sum(rates) / len(rates), cg, cl, global_net)
    assert all(torch.allclose(result.weights[k], eng.get_weights()[k], atol=1e-6) for k in names)
    delta = helper.get_delta_controls()
    assert set(result.extras["c_diff"]) == set(delta) == set(names)
    assert all(np.allclose(result.extras["c_diff"][k].numpy(), delta[k], atol=1e-5) for k in names)
    # The correction really moved the weights: without controls the same training ends elsewhere.
    plain = LocalSiteTrainer(data, Runtime.create("cpu", num_threads=2), seed=3).train(start, 1, progress=(0.0, 0.1))
    assert any(not torch.allclose(plain.weights[k], result.weights[k]) for k in names)


def test_ditto_keeps_a_personal_model_with_its_own_optimizer_state(tiny):
    from fedseg.runners.site import LocalSiteTrainer

    spec, data = tiny
    trainer = LocalSiteTrainer(data, Runtime.create("cpu", num_threads=2), seed=0)
    site = get_algorithm("ditto").site({"lambda": 0.1, "epochs": 1})
    start = trainer.engine.get_weights()
    out = site.train_round(trainer, start, {}, epochs=1, progress=(0.0, 0.5))
    assert {"val_dice_personal", "train_loss_personal"} <= set(out.metrics)
    personal = site.model_to_submit(out.result.weights)
    assert personal is site.personal and any(not torch.equal(personal[k], out.result.weights[k]) for k in personal)
    assert set(site.models_to_keep()) == {"personal"}
    # Two optimizer states: the global slot's is what the next global round continues from.
    global_state = trainer._slots._saved["global"]["state"]
    assert global_state and trainer.engine.optimizer.state_dict()["state"]
    trainer._slots.use("global")
    assert trainer.engine.optimizer.state_dict()["state"].keys() == global_state.keys()


# SCAFFOLD on the server ---------------------------------------------------------------------------
def _scaffold_round(k: int):
    """A ``ConsortiumScaffold`` in the state ``FedAvg.run`` puts it in at the start of a round."""
    from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

    from fedseg.algorithms.scaffold import ConsortiumScaffold

    c = ConsortiumScaffold(min_clients=1, num_rounds=1)
    c.current_round = 0
    c._aggr_helper = WeightedAggregationHelper(exclude_vars=c.exclude_vars)
    c._aggr_metrics_helper = WeightedAggregationHelper()
    c._ctrl_helper = WeightedAggregationHelper()
    c._all_metrics, c._received_count, c._expected_count = True, 0, k
    c._params_type, c._site_metric_weights = None, {}
    return c


def test_scaffold_aggregation_is_nvflares_and_leaves_out_an_update_without_controls():
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.workflows.scaffold import scaffold_aggregate_fn

    rng = np.random.default_rng(1)

    def update(i, controls=True):
        meta = {NUM_STEPS: 3 + 2 * i, "client_name": f"site-{i + 1}"}
        if controls:
            meta[CTRL_DIFF] = {"w": rng.normal(size=(2, 3)).astype(np.float32)}
        return FLModel(params={"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.ones(3, np.float32) * i},
                       metrics={"val_dice": 0.5}, meta=meta, current_round=0)

    sent = [update(i) for i in range(3)]
    controller = _scaffold_round(4)
    assert [controller._aggregate_one_result(u) for u in sent] == [True] * 3
    assert controller._aggregate_one_result(update(3, controls=False)) is False  # never averaged
    ours = controller._get_aggregated_result()
    reference = scaffold_aggregate_fn(sent)
    assert np.allclose(ours.params["w"], reference.params["w"]) and np.allclose(ours.params["b"], reference.params["b"])
    # The global controls grow by NVFlare's weighted mean of the control differences.
    assert np.allclose(ours.meta[CTRL_DIFF]["w"], reference.meta[CTRL_DIFF]["w"], atol=1e-6)
    controller._controls = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    controller.add_control_difference(ours.meta[CTRL_DIFF])
    assert np.allclose(controller._controls["w"], 1 + reference.meta[CTRL_DIFF]["w"], atol=1e-6)


def test_the_guard_refuses_a_poisoned_control_difference():
    from fedseg.algorithms.scaffold import control_problems
    from fedseg.flare.guard import Reference

    ref = Reference.from_weights({"w": torch.zeros(2, 3), "bn.running_mean": torch.zeros(3)}, exact=True, source="t")
    assert control_problems({"w": np.zeros((2, 3), np.float32)}, ref) == []
    assert "NaN" in control_problems({"w": np.full((2, 3), np.nan, np.float32)}, ref)[0]
    assert "does not have: x" in control_problems({"w": np.zeros((2, 3), np.float32), "x": np.zeros(1)}, ref)[0]
    assert "another shape: w [3]" in control_problems({"w": np.zeros(3, np.float32)}, ref)[0]
    assert control_problems("not a mapping", ref) == ["its SCAFFOLD control difference is not a mapping of tensors"]


def test_a_scaffold_jobs_guard_drops_an_update_with_poisoned_controls_and_fedavgs_does_not_look():
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    from fedseg.flare.constants import CTRL_DIFF
    from fedseg.flare.guard import UpdateGuard

    def guarded(algorithm):
        dxo = DXO(DataKind.WEIGHTS, data={"w": np.zeros((2, 3), np.float32)},
                  meta={CTRL_DIFF: {"w": np.full((2, 3), np.nan, np.float32)}})
        out = UpdateGuard(algorithm=algorithm).process_dxo(dxo, Shareable(), FLContext())
        return out.data if out is not None else dxo.data

    assert guarded("scaffold") == {}  # emptied: left out of the average
    assert list(guarded("fedavg")) == ["w"]  # FedAvg's jobs carry no controls and never read them
