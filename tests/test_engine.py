import math

import pytest
import torch

from fedseg.engine import Runtime, SegmentationEngine
from fedseg.errors import NonFiniteLossError
from fedseg.tasks import get_task


@pytest.mark.stochastic
def test_engine_learns_spleen_on_tiny_phantoms(trained_spleen):
    engine, data, _ = trained_spleen
    held_out = engine.eval_data(data.items("validation") + data.items("test"))
    scores = engine.evaluate(held_out)
    assert scores.class_names == ("spleen",)
    assert scores.n_cases == 4
    # An untrained network scores about 0 here; the bar needs real learning.
    assert scores.mean > 0.65, scores.per_case
    metrics = scores.as_metrics("val")
    assert set(metrics) == {"val_dice", "val_dice_spleen", "val_n_spleen", "val_fp_spleen", "val_cases"}


def test_training_is_reproducible_for_a_seed(spleen_site):
    """The same seed and thread count give the same losses, weights and Dice; another seed does not."""
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data

    spec = get_task("spleen", "tiny")
    data = open_site_data(spec, load_site_config(spleen_site))
    items, held_out = data.items("training")[:2], data.items("test")[:1]

    def run(seed):
        engine = SegmentationEngine(spec, Runtime.create("cpu", num_threads=2), seed=seed)
        result = engine.train(engine.train_data(items), iterations=2)
        return result, engine.evaluate(engine.eval_data(held_out)).per_case

    (a, dice_a), (b, dice_b), (c, _) = run(7), run(7), run(8)
    assert a.epoch_losses == b.epoch_losses and dice_a == dice_b
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert any(not torch.equal(a.weights[k], c.weights[k]) for k in a.weights)
    assert a.n_samples == 2 and a.iterations == 2


def test_non_finite_loss_stops_training(spleen_site):
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data

    spec = get_task("spleen", "tiny")
    data = open_site_data(spec, load_site_config(spleen_site))
    engine = SegmentationEngine(spec, Runtime.create("cpu"))
    weights = engine.get_weights()
    first = next(k for k, v in weights.items() if v.dtype.is_floating_point and v.dim() > 1)
    weights[first] = torch.full_like(weights[first], math.nan)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        engine.train(engine.train_data(data.items("training")[:1]), iterations=1, weights=weights)


def test_train_needs_epochs_or_iterations(spleen_site):
    engine = SegmentationEngine(get_task("spleen", "tiny"), Runtime.create("cpu"))
    with pytest.raises(ValueError, match="exactly one"):
        engine.train(None, epochs=1, iterations=1)
