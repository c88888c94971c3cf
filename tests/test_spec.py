from dataclasses import replace

import pytest

from fedseg.networks import TaskNetwork, build_network, count_parameters
from fedseg.tasks import get_task


def test_spleen_full_follows_the_card():
    spec = get_task("spleen")
    assert spec.spacing == (1.5, 1.5, 2.0)
    assert (spec.intensity.a_min, spec.intensity.a_max) == (-57.0, 164.0)
    assert spec.patch_size == spec.sw_roi == (96, 96, 96)
    assert spec.network.channels == (16, 32, 64, 128, 256) and spec.network.strides == (2, 2, 2, 2)
    assert spec.network.num_res_units == 2
    assert spec.loss == "dicece" and spec.optimizer.name == "novograd" and spec.optimizer.lr == 2e-3
    assert spec.sw_overlap == 0.5 and spec.num_samples == 4
    # The card's network: about 4.8 M parameters.
    assert 4.7e6 < count_parameters(build_network(spec)) < 4.9e6


def test_tiny_is_derived_not_copied():
    full, tiny = get_task("spleen"), get_task("spleen", "tiny")
    assert tiny.variant_name == "tiny"
    assert tiny.network.channels == tuple(c // 2 for c in full.network.channels)
    assert tiny.network.strides == full.network.strides
    assert tiny.patch_size == tiny.sw_roi == full.small.patch_size
    # Everything the tiny variant does not override is the full recipe's.
    for field in ("intensity", "loss", "optimizer", "labels", "num_samples", "augment", "sw_overlap"):
        assert getattr(tiny, field) == getattr(full, field), field


def test_optimizer_choice_from_older_card():
    adam = get_task("spleen", optimizer="adam")
    assert adam.optimizer.name == "adam" and adam.optimizer.lr == 2e-4
    with pytest.raises(ValueError, match="novograd, adam|adam, novograd"):
        get_task("spleen", optimizer="sgd")


def test_unknown_task_and_variant_are_refused_with_choices():
    with pytest.raises(ValueError, match="choose one of"):
        get_task("brain")
    with pytest.raises(ValueError, match="full, tiny"):
        get_task("spleen", "huge")


def test_patch_must_fit_network_downsampling():
    spec = get_task("spleen")
    with pytest.raises(ValueError, match="multiples of 16"):
        replace(spec, patch_size=(90, 96, 96))


def test_task_network_matches_spec_network_keys():
    spec = get_task("spleen", "tiny")
    assert TaskNetwork("spleen", "tiny").state_dict().keys() == build_network(spec).state_dict().keys()


def test_cosine_schedule_decays_to_the_floor():
    spec = get_task("spleen")
    assert spec.lr_at(0.0) == spec.optimizer.lr
    assert abs(spec.lr_at(1.0) - spec.optimizer.lr * spec.min_lr_fraction) < 1e-12
    assert spec.lr_at(0.25) > spec.lr_at(0.5) > spec.lr_at(0.75)
    assert replace(spec, lr_schedule="constant").lr_at(0.9) == spec.optimizer.lr


def test_a_task_module_declares_spec_phantoms_and_schedule_and_the_registries_follow():
    from fedseg.data.synth import PHANTOMS
    from fedseg.flare.jobs import COMMITTED
    from fedseg.tasks import phantom_labels, task_names, task_schedule

    assert tuple(PHANTOMS) == task_names()
    fedavg = {job.task: job for job in COMMITTED if job.algorithm == "fedavg"}
    assert tuple(fedavg) == task_names()
    for name in task_names():
        spec = get_task(name)
        schedule = task_schedule(name)
        assert (fedavg[name].num_rounds, fedavg[name].local_epochs) == (schedule.num_rounds, schedule.local_epochs)
        if spec.fixed_classes:  # the phantoms' dataset.json names exactly the spec's classes
            assert phantom_labels(name) == spec.labels and PHANTOMS[name].labels is None
        else:
            assert len(phantom_labels(name)) > 2
