"""Reduced precision: the site chooses it, the device must support it, and bf16 scores like fp32."""

import math
import time

import pytest
import torch

from conftest import make_site
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.engine.runtime import AUTO_PRECISION_ENV, cpu_has_native_bf16
from fedseg.errors import ConfigError
from fedseg.site_config import load_site_config
from fedseg.tasks import get_task

SPEC = get_task("spleen", "tiny")


def _site(tmp_path, spleen_dataset, **settings):
    path = make_site(tmp_path, "site-9", "spleen", spleen_dataset, spleen_dataset / "splits" / "site-1.json",
                     **settings)
    return load_site_config(path)


def test_a_precision_the_site_cannot_have_is_refused_naming_site_and_key(tmp_path, spleen_dataset):
    with pytest.raises(ConfigError) as err:
        _site(tmp_path, spleen_dataset, precision="fp64")
    assert "site-9" in str(err.value) and "'precision' must be one of auto, fp32, bf16, fp16, got 'fp64'" in str(
        err.value)
    # fp16 autocast exists on CUDA only: on a CPU site it is a configuration error, not a slow surprise.
    site = _site(tmp_path / "cpu", spleen_dataset, precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match=r"site 'site-9' .*'precision: fp16' needs a CUDA device"):
        Runtime.for_site(site)


def test_auto_is_bf16_where_the_cpu_has_it_and_the_site_or_command_line_overrides(tmp_path, spleen_dataset,
                                                                                  monkeypatch):
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)  # the suite pins fp32 (conftest); auto's own choice here
    native = cpu_has_native_bf16()
    assert Runtime.create("cpu").precision == ("bf16" if native else "fp32")
    assert Runtime.create("cpu").amp == native
    site = _site(tmp_path, spleen_dataset, precision="bf16", device="cpu")
    assert Runtime.for_site(site).precision == "bf16"
    assert Runtime.for_site(site, precision="fp32").precision == "fp32"  # --precision overrides the YAML
    assert Runtime.create("cpu", precision="bf16", amp=False).precision == "fp32"
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp32")
    assert Runtime.create("cpu").precision == "fp32"  # what the suite runs in, whatever the CPU
    assert Runtime.create("cpu", precision="bf16").precision == "bf16"  # an explicit choice still wins
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp64")
    with pytest.raises(ConfigError, match=r"\$FEDSEG_AUTO_PRECISION is 'fp64'; allowed: fp32, bf16, fp16"):
        Runtime.create("cpu")


def test_bf16_validation_dice_matches_fp32(trained_spleen):
    """bf16 autocast scores the held-out phantoms within 0.005 Dice of fp32 (per case and on average)."""
    engine, data, _ = trained_spleen
    weights = engine.get_weights()
    held_out = engine.eval_data(data.items("validation") + data.items("test"))
    scores, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        runtime = Runtime.create("cpu", precision=precision, num_threads=2)
        scorer = SegmentationEngine(SPEC, runtime, class_names=data.class_names)
        start = time.perf_counter()
        scores[precision] = scorer.evaluate(held_out, weights=weights)
        seconds[precision] = time.perf_counter() - start
    fp32, bf16 = scores["fp32"], scores["bf16"]
    print(f"held-out Dice fp32 {fp32.mean:.4f} bf16 {bf16.mean:.4f} ({fp32.n_cases} cases); "
          f"evaluation {seconds['fp32']:.1f} s fp32, {seconds['bf16']:.1f} s bf16 (native bf16: {cpu_has_native_bf16()})")
    assert fp32.n_cases == bf16.n_cases >= 4
    assert fp32.mean > 0.5, fp32.per_case  # a model that segments, so agreement means something
    assert abs(fp32.mean - bf16.mean) < 0.005, (fp32.per_case, bf16.per_case)
    assert fp32.per_case != bf16.per_case  # bf16 really ran: its rounding moves some voxels


def test_a_bf16_training_step_learns_like_fp32(trained_spleen):
    """From the same weights and batch, bf16's loss is fp32's within 2% and the step moves the weights alike."""
    engine, data, _ = trained_spleen
    start = engine.get_weights()
    items = data.items("training")[:2]
    results = {}
    for precision in ("fp32", "bf16"):
        trainer = SegmentationEngine(SPEC, Runtime.create("cpu", precision=precision, num_threads=2),
                                     class_names=data.class_names, seed=3)
        result = trainer.train(trainer.train_data(items), iterations=1, weights=start)
        results[precision] = (result, trainer.get_weights())
    (r32, w32), (r16, w16) = results["fp32"], results["bf16"]
    first32, first16 = r32.epoch_losses[0], r16.epoch_losses[0]
    assert math.isfinite(first16) and abs(first16 - first32) <= 0.02 * abs(first32), (first32, first16)
    assert first16 != first32  # the step really ran in bf16
    moved32 = torch.cat([(w32[k] - start[k]).flatten().float() for k in start if start[k].is_floating_point()])
    moved16 = torch.cat([(w16[k] - start[k]).flatten().float() for k in start if start[k].is_floating_point()])
    cosine = float(torch.nn.functional.cosine_similarity(moved32, moved16, dim=0))
    print(f"first-step loss fp32 {first32:.4f} bf16 {first16:.4f}; cosine of the weight updates {cosine:.3f}")
    assert cosine > 0.9
