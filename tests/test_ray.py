"""The Ray backend without a Ray cluster: sharding, step counts, averaging (fedseg.engine.distributed),
planning and settings checks.

The end-to-end Ray runs are in test_ray_train.py and test_ray_site.py (marked slow).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedseg.engine import Runtime, SegmentationEngine
from fedseg.errors import CheckpointError, ConfigError
from fedseg.engine.distributed import average_weights, shard, steps_per_epoch
from fedseg.ray.common import MAX_TEMP_DIR_CHARS, Fault, plan_workers, temp_dir_for
from fedseg.site_config import load_site_config
from fedseg.tasks import get_task


def test_shards_cover_every_case_exactly_once():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ValueError, match="rank 3"):
        shard(items, 3, 3)


@pytest.mark.parametrize("n, world, batch, steps", [
    (6, 2, 2, 2),   # shards of 3: batches of 2 and 1
    (5, 2, 2, 2),   # shards of 3 and 2: the larger one sets the count for both
    (3, 2, 2, 1),   # shards of 2 and 1: one batch each
    (6, 1, 2, 3),   # one worker: the local runner's count
    (8, 3, 4, 1),   # shards of 3, 3, 2 with batch 4: one (smaller) batch each
])
def test_every_worker_takes_as_many_steps_as_the_largest_shard_needs(n, world, batch, steps):
    assert steps_per_epoch(n, world, batch) == steps


def test_steps_per_epoch_refuses_more_workers_than_cases():
    with pytest.raises(ValueError, match="cannot be shared by 4 workers"):
        steps_per_epoch(3, 4, 2)


def test_average_weights_averages_floats_and_keeps_counters():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.running_mean": torch.tensor([0.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.running_mean": torch.tensor([1.0]), "bn.num_batches_tracked": torch.tensor(5)}
    avg = average_weights([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(avg["bn.running_mean"], torch.tensor([0.5]))
    assert avg["bn.num_batches_tracked"].dtype == torch.int64 and int(avg["bn.num_batches_tracked"]) == 5
    with pytest.raises(ValueError, match="different weight names"):
        average_weights([a, {"w": a["w"]}])


def test_plan_splits_cpus_and_names_the_setting_that_does_not_fit():
    plan = plan_workers(2, 0.0, {"CPU": 8.0})
    assert (plan.cpus_per_worker, plan.use_gpu, plan.backend) == (4, False, "gloo")
    assert plan.resources() == {"CPU": 4}
    gpu = plan_workers(2, 1.0, {"CPU": 16.0, "GPU": 2.0})
    assert gpu.backend == "nccl" and gpu.resources() == {"CPU": 8, "GPU": 1.0}
    assert plan_workers(2, 0.5, {"CPU": 4.0, "GPU": 1.0}).backend == "gloo"  # NCCL cannot share a GPU
    with pytest.raises(ConfigError, match=r"--workers 3 needs 3 CPUs .* has 2"):
        plan_workers(3, 0.0, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"--gpus-per-worker 1 needs 2 GPUs but the Ray cluster has 0"):
        plan_workers(2, 1.0, {"CPU": 4.0})
    with pytest.raises(ConfigError, match=r"ray.workers of site 'a' must be a whole number"):
        plan_workers(0, 0.0, {"CPU": 4.0}, workers_setting="ray.workers of site 'a'")


def test_ray_temp_files_go_inside_the_run_folder_unless_its_path_is_too_long(tmp_path):
    short_root = Path("/tmp") / f"fr{tmp_path.name[-8:]}"
    try:
        inside, stand_in = temp_dir_for(short_root)
        assert inside == (short_root / "ray_tmp").resolve() and not stand_in and inside.is_dir()
    finally:
        import shutil
        shutil.rmtree(short_root, ignore_errors=True)
    deep = tmp_path / ("x" * MAX_TEMP_DIR_CHARS)
    other, stand_in = temp_dir_for(deep)
    try:
        assert stand_in and other.is_dir() and len(str(other)) <= MAX_TEMP_DIR_CHARS
        assert not (deep / "ray_tmp").exists()
    finally:
        other.rmdir()


def test_fault_specs_parse_and_bad_ones_name_the_variable():
    assert Fault.parse("kill:3:1") == Fault("kill", 3, 1)
    assert Fault.parse("stop:2") == Fault("stop", 2, 0)
    assert Fault.parse(None) is None and Fault.parse("") is None
    with pytest.raises(ConfigError, match="FEDSEG_RAY_FAULT='kill:x'"):
        Fault.parse("kill:x")


def test_nothing_outside_fedseg_ray_imports_ray():
    code = ("import sys, fedseg, fedseg.cli, fedseg.engine, fedseg.engine.distributed, fedseg.runners.local, "
            "fedseg.runners.site, fedseg.backends, fedseg.training.loop, fedseg.ray, fedseg.ray.cli, fedseg.ray.common, "
            "fedseg.ray.config, fedseg.checkpoint, fedseg.site_data; "
            "fedseg.cli.build_parser(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tune_is_a_fedseg_command():
    from fedseg.cli import build_parser
    from fedseg.ray.cli import cmd_tune

    args = build_parser().parse_args(["tune", "--task", "spleen", "--variant", "tiny", "--site-config", "s.yaml",
                                      "--trials", "3", "--epochs", "4"])
    assert args.func is cmd_tune and (args.trials, args.epochs, args.grace_epochs) == (3, 4, 2)


class _Wrapper(torch.nn.Module):
    """Stands in for DDP: holds the network as ``module``; its forward must not be used outside training."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


def test_a_wrapped_model_keeps_bare_weight_names_and_bare_inference(spleen_site):
    from fedseg.site_data import open_site_data

    spec = get_task("spleen", "tiny")
    data = open_site_data(spec, load_site_config(spleen_site))
    engine = SegmentationEngine(spec, Runtime.create("cpu"), seed=0)
    before = engine.get_weights()
    engine.wrap_model(_Wrapper)
    assert isinstance(engine.model, _Wrapper) and engine.network is engine.model.module
    assert list(engine.get_weights()) == list(before)  # no "module." prefix
    engine.set_weights(before)
    result = engine.train(engine.train_data(data.items("training")[:1]), iterations=1)
    assert engine.model.calls == 1 and not any(k.startswith("module.") for k in result.weights)
    engine.evaluate(engine.eval_data(data.items("test")[:1]))
    assert engine.model.calls == 1  # inference went to the bare network
    engine.wrap_model(_Wrapper)  # wrapping again wraps the bare network, not the wrapper
    assert not isinstance(engine.model.module, _Wrapper)


def test_a_ray_run_refuses_more_workers_than_training_cases(spleen_site, tmp_path):
    from fedseg.ray.runner import run_ray

    with pytest.raises(ConfigError, match=r"--workers 7 is more than the 6 training case\(s\)"):
        run_ray(get_task("spleen", "tiny"), [load_site_config(spleen_site)], tmp_path, epochs=1, workers=7)
    assert not (tmp_path / "ray_run.json").exists()  # refused before anything was written or started


def test_resume_needs_a_ray_run_and_the_same_settings(spleen_site, tmp_path):
    from fedseg.ray.runner import MANIFEST, run_ray

    spec, site = get_task("spleen", "tiny"), load_site_config(spleen_site)
    with pytest.raises(CheckpointError, match=r"no Ray run to continue there \(ray_run.json is missing\)"):
        run_ray(spec, [site], tmp_path / "x", epochs=2, resume=tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({
        "name": "fedseg-old", "task": "spleen", "variant": "tiny", "optimizer": "novograd", "seed": 0,
        "epochs": 40, "sites": ["site-1"]}))
    with pytest.raises(ConfigError, match=r"--epochs 2 \(the run has 40\)") as err:
        run_ray(spec, [site], tmp_path / "x", epochs=2, seed=0, resume=tmp_path)
    assert "--seed" not in str(err.value)
    with pytest.raises(ConfigError, match=r"--variant 'full' \(the run has 'tiny'\).*--seed 1 \(the run has 0\)"):
        run_ray(get_task("spleen", "full"), [site], tmp_path / "x", epochs=40, seed=1, resume=tmp_path)


def test_a_ray_site_is_trained_by_the_ray_site_trainer(spleen_dataset, tmp_path):
    from conftest import make_site
    from fedseg.ray.trainer import RaySiteTrainer
    from fedseg.backends import make_site_trainer
    from fedseg.site_data import open_site_data

    spec = get_task("spleen", "tiny")
    ok = make_site(tmp_path, "site-1", "spleen", spleen_dataset, spleen_dataset / "splits" / "site-1.json",
                   backend="ray", ray={"workers": 2})
    data = open_site_data(spec, load_site_config(ok))
    trainer = make_site_trainer(data, Runtime.create("cpu"), seed=0)
    assert isinstance(trainer, RaySiteTrainer) and trainer.n_train == 6 and trainer._cluster is None  # no Ray yet
    trainer.close()
    many = make_site(tmp_path / "b", "site-1", "spleen", spleen_dataset, spleen_dataset / "splits" / "site-1.json",
                     backend="ray", ray={"workers": 8})
    with pytest.raises(ConfigError, match=r"ray.workers 8 of site 'site-1' .* more than its 6 training case"):
        RaySiteTrainer(open_site_data(spec, load_site_config(many)), Runtime.create("cpu"))


def test_a_ray_round_that_outlives_its_bound_is_stopped_and_refused():
    """The site thread that runs a round's fit() is bounded: past ray.round_timeout_s the stop action
    runs (it shuts the site's Ray down, which ends the fit) and the round ends in RoundTimeout."""
    import threading
    import time

    from fedseg.errors import FedsegError
    from fedseg.ray.trainer import RoundTimeout, in_own_thread

    released = threading.Event()
    stopped = []

    def fit():  # stands in for a fit() that only ends once its cluster is stopped
        released.wait(30)
        raise RuntimeError("the cluster went away")

    def stop():
        stopped.append(time.monotonic())
        released.set()

    start = time.monotonic()
    with pytest.raises(RoundTimeout, match=r"did not finish within 0.5 s \(ray.round_timeout_s\)") as err:
        in_own_thread(fit, 0.5, stop)
    assert isinstance(err.value, FedsegError)  # the FL client withholds the round's update on it
    assert stopped and 0.4 < stopped[0] - start < 5 and time.monotonic() - start < 10
    assert in_own_thread(lambda: 7, 5, stop) == 7 and len(stopped) == 1  # a round within its bound is untouched
