"""Inference: ``fedseg.infer.Predictor`` against plain ``monai.inferers.sliding_window_inference``.

The same briefly trained model segments the same volumes three ways, each from the file on disk
to a mask on the input's own grid, scored against the label file with the same Dice:

* ``fedseg``: ``Predictor.probabilities`` then argmax, what ``fedseg infer`` computes (the mask
  file is not written, so that disk compression does not count);
* ``monai default``: the task's preprocessing, ``sliding_window_inference`` with MONAI's defaults
  (``sw_batch_size=1``, ``overlap=0.25``, constant blending), back to the input grid with
  ``Invertd`` as MONAI's spleen tutorial does;
* ``monai, spec settings``: the same with the spec's window settings (overlap, Gaussian blending,
  ``sw_batch_size``), which separates the cost of the settings from the cost of fedseg's code.

``profile`` splits one fedseg volume into its steps to show where the time goes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bench.common import Settings, ratio, resolve_device

AGREEMENT = 0.005  # Dice difference under which fedseg and plain MONAI count as agreeing


def _dice(mask: torch.Tensor, label_path: str, num_classes: int) -> float:
    """Mean foreground Dice of a class-index mask (spatial shape) against the label file on the same grid."""
    from monai.transforms import LoadImage

    from fedseg.engine.metrics import case_dice

    label = LoadImage(image_only=True, ensure_channel_first=True)(label_path).as_tensor().long()
    if tuple(label.shape[1:]) != tuple(mask.shape):
        raise ValueError(f"mask {tuple(mask.shape)} and label {tuple(label.shape[1:])} are on different grids")
    dice, _ = case_dice(mask[None, None].long(), label[None], num_classes, "one")
    return sum(dice) / len(dice)


class PlainMonai:
    """Tutorial-style inference: preprocess, sliding window, ``Invertd`` back to the input's grid, argmax."""

    def __init__(self, spec, weights: dict, device: torch.device, *, overlap: float = 0.25, sw_batch_size: int = 1,
                 mode: str = "constant"):
        from monai.networks.nets import UNet
        from monai.transforms import Invertd

        from fedseg.networks import unet_kwargs
        from fedseg.transforms import eval_transforms

        self.model = UNet(**unet_kwargs(spec)).to(device).eval()
        self.model.load_state_dict(weights)
        self.spec, self.device = spec, device
        self.overlap, self.sw_batch_size, self.mode = overlap, sw_batch_size, mode
        self.preprocess = eval_transforms(spec, with_label=False, track_meta=True)
        self.invert = Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False,
                              to_tensor=True)

    @torch.inference_mode()
    def mask(self, image_path: str) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        data = self.preprocess({"image": image_path})
        image = data["image"]
        logits = sliding_window_inference(image[None].to(self.device), roi_size=self.spec.sw_roi,
                                          sw_batch_size=self.sw_batch_size, predictor=self.model,
                                          overlap=self.overlap, mode=self.mode)
        data["pred"] = logits[0].cpu()
        return self.invert(data)["pred"].argmax(0)


def _time_volumes(segment, volumes: list[dict], num_classes: int) -> dict:
    seconds, dice = [], []
    for item in volumes:
        start = time.perf_counter()
        mask = segment(item["image"])
        seconds.append(time.perf_counter() - start)
        dice.append(_dice(mask, item["label"], num_classes))
    total = sum(seconds)
    return {"volumes": len(volumes), "seconds": total, "volumes_per_s": len(volumes) / total,
            "seconds_per_volume": seconds, "dice": sum(dice) / len(dice), "dice_per_volume": dice}


def profile(predictor, image_path: str) -> dict:
    """fedseg's inference steps one by one (the calls ``Predictor.segment`` makes, but writing the mask)."""
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    from fedseg.infer import check_input
    from fedseg.transforms import IMAGE

    steps, t = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = now - t
        t = now

    check_input(Path(image_path), predictor.spec)
    lap("check input file (segment() only)")
    item = predictor.preprocess({IMAGE: image_path})
    net_image = item[IMAGE]
    lap("load + preprocess")
    logits = predictor.engine.predict_logits(net_image)
    lap("sliding window")
    probs = MetaTensor(torch.softmax(logits, dim=0).cpu(), meta=dict(net_image.meta))
    lap("softmax")
    original = predictor.loader(image_path)
    lap("load input again (for its grid)")
    back = ResampleToMatch(mode="bilinear", padding_mode="zeros")(probs, img_dst=original)
    lap("resample probabilities to input grid")
    mask = back.as_tensor().argmax(0)
    lap("argmax over classes")
    # The same mask another way: on CPU torch's argmax over the leading (class) axis is far slower.
    assert torch.equal(torch.max(back.as_tensor(), 0).indices, mask)
    lap("torch.max(0).indices instead (same mask)")
    steps["network grid"] = list(net_image.shape[1:])
    steps["input grid"] = list(original.shape[1:])
    return steps


def train_briefly(spec, items: list[dict], device: str, threads: int, iterations: int, out: Path,
                  trained: tuple | None = None) -> Path:
    """A model trained ``iterations`` steps with the engine, saved as fedseg saves models.

    ``trained`` is ``(engine, loader data, iterations done)`` from the throughput comparison, to go on from.
    """
    from fedseg.checkpoint import save_model
    from fedseg.engine import Runtime, SegmentationEngine

    if trained is None:
        engine = SegmentationEngine(spec, Runtime.create(device, num_threads=threads), seed=0)
        trained = (engine, engine.train_data(items), 0)
    engine, data, done = trained
    if iterations > done:
        engine.train(data, iterations=iterations - done)
    return save_model(Path(out), engine.get_weights(), spec)


def run(settings: Settings, items: dict[str, list[dict]], work: Path, trained: tuple | None = None) -> dict:
    from fedseg.checkpoint import load_model
    from fedseg.engine import Runtime
    from fedseg.infer import Predictor
    from fedseg.tasks import get_task

    spec = get_task("spleen", settings.variant)
    device = resolve_device(settings.device)
    model_path = train_briefly(spec, items["training"], device, settings.threads, settings.infer_train_iterations,
                               work / "infer_model.pt", trained)
    volumes = (items["test"] + items["validation"])[: settings.infer_volumes]
    runtime = Runtime.create(device, num_threads=settings.threads)
    predictor = Predictor(spec, model_path, runtime)
    weights = load_model(model_path, spec)
    default = PlainMonai(spec, weights, runtime.device)
    same = PlainMonai(spec, weights, runtime.device, overlap=spec.sw_overlap, sw_batch_size=spec.sw_batch_size,
                      mode="gaussian")
    n = spec.num_classes
    fedseg_run = _time_volumes(lambda p: predictor.probabilities(Path(p)).argmax(0), volumes, n)
    default_run = _time_volumes(default.mask, volumes, n)
    same_run = _time_volumes(same.mask, volumes, n)
    diff = abs(fedseg_run["dice"] - default_run["dice"])
    return {
        "task": f"spleen/{spec.variant_name}", "device": str(runtime.device), "threads": settings.threads,
        "model_trained_iterations": settings.infer_train_iterations,
        "fedseg_settings": {"overlap": spec.sw_overlap, "sw_batch_size": spec.sw_batch_size, "mode": "gaussian",
                            "roi": list(spec.sw_roi)},
        "monai_default_settings": {"overlap": 0.25, "sw_batch_size": 1, "mode": "constant", "roi": list(spec.sw_roi)},
        "fedseg": fedseg_run, "monai_default": default_run, "monai_spec_settings": same_run,
        "ratio_fedseg_over_monai_default": ratio(fedseg_run["volumes_per_s"], default_run["volumes_per_s"]),
        "ratio_fedseg_over_monai_spec_settings": ratio(fedseg_run["volumes_per_s"], same_run["volumes_per_s"]),
        "dice_difference": diff, "dice_tolerance": AGREEMENT, "dice_agree": diff <= AGREEMENT,
        "dice_difference_same_settings": abs(fedseg_run["dice"] - same_run["dice"]),
        "profile_fedseg_one_volume": profile(predictor, volumes[0]["image"]),
    }


def rows(result: dict) -> list[list]:
    out = []
    for key, name in (("fedseg", "fedseg Predictor"), ("monai_default", "plain MONAI, defaults"),
                      ("monai_spec_settings", "plain MONAI, spec's window settings")):
        r = result[key]
        extra = ""
        if key == "fedseg":
            extra = f"{result['ratio_fedseg_over_monai_default']:.3g}"
        elif key == "monai_spec_settings":
            extra = f"fedseg/this {result['ratio_fedseg_over_monai_spec_settings']:.3g}"
        out.append([f"inference: {name}", f"{r['volumes_per_s']:.3g} volumes/s", f"Dice {r['dice']:.4f}", extra])
    agree = "agree" if result["dice_agree"] else "DISAGREE"
    out.append(["inference: Dice fedseg vs MONAI defaults", f"|diff| {result['dice_difference']:.4f}",
                f"{agree} (tolerance {result['dice_tolerance']})", "different window settings"])
    same = result["dice_difference_same_settings"]
    out.append(["inference: Dice fedseg vs MONAI, same settings", f"|diff| {same:.4f}",
                f"{'agree' if same <= result['dice_tolerance'] else 'DISAGREE'} (tolerance {result['dice_tolerance']})",
                "only the way back to the input grid differs"])
    prof = result["profile_fedseg_one_volume"]
    slow, fast = prof["argmax over classes"], prof["torch.max(0).indices instead (same mask)"]
    out.append(["inference: fedseg argmax on the input grid", f"{slow:.3g} s of {result['fedseg']['seconds_per_volume'][0]:.3g} s",
                f"torch.max(0).indices: {fast:.3g} s", f"{slow / fast:.3g}x faster" if fast > 0 else ""])
    return out
