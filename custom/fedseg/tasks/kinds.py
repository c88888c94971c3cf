"""Kinds of task: how a task's data, training steps and scoring differ, behind one interface.

``segmentation`` (spleen, liver, prostate): volumes, sliding-window scoring, class names fixed by the
spec. ``interactive`` (Deepgrow 2D): 2D slice samples per object, simulated clicks before every
training step, Dice after N clicks, and class names taken from the dataset's objects. The engine,
the data layers and the reports call the task's kind instead of asking whether a task is
interactive; a new kind is one class here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedseg.tasks.spec import TaskSpec

if TYPE_CHECKING:
    import torch

    from fedseg.engine.data import EvalData
    from fedseg.engine.engine import SegmentationEngine
    from fedseg.engine.metrics import DiceScores
    from fedseg.site_data import SiteData


class Session:
    """What one engine does differently for its task's kind (segmentation: nothing)."""

    def training_input(self, network: "torch.nn.Module", images: "torch.Tensor", labels: "torch.Tensor",
                       batch: dict) -> "torch.Tensor":
        """The network input of one training step (e.g. after simulated clicks)."""
        return images

    def evaluate(self, engine: "SegmentationEngine", data: "EvalData", label: str) -> "DiceScores":
        return engine.evaluate_volumes(data, label)


class Segmentation:
    """Volumes in, a class per voxel out; the classes are the spec's."""

    name = "segmentation"
    # Per-case spread and overlay pictures of whole volumes mean something for this kind.
    volume_pictures = True
    # Its training chain can crop on the device from device-cached volumes (train_transforms(device=)).
    crops_on_device = True

    def items(self, data: "SiteData", split: str) -> list[dict]:
        return data.datalist.items(split)

    def transforms(self, spec: TaskSpec):
        from fedseg.transforms import eval_transforms, train_transforms

        return train_transforms, eval_transforms

    def session(self, spec: TaskSpec, seed: int) -> Session:
        return Session()


class ClickSession(Session):
    """Deepgrow: simulated clicks before every training step, Dice after N clicks when scoring."""

    def __init__(self, spec: TaskSpec, seed: int):
        from fedseg.deepgrow.clicks import ClickSimulator  # MONAI's deepgrow needs scikit-image: only here

        self.clicks = ClickSimulator(spec, seed)

    def training_input(self, network, images, labels, batch):
        return self.clicks.interact(network, images, labels, list(batch["guidance"]))

    def evaluate(self, engine, data, label):
        samples = [data.dataset[i] for i in range(len(data.dataset))]
        objects = [int(item["region"]) - 1 for item in data.dataset.data]
        return self.clicks.score(engine.network, samples, objects, engine.class_names[1:], engine.runtime.device, label)


class Interactive(Segmentation):
    """One object per 2D sample, segmented from clicks; the objects are whatever the dataset labels."""

    name = "interactive"
    volume_pictures = False  # masks come from clicks: see the Dice-vs-clicks curve instead
    crops_on_device = False  # its slice chain samples around clicks on the host

    def items(self, data, split):
        from fedseg.deepgrow.prepare import prepare_slices

        spec = data.spec
        out = data.site.derived_dir(spec.name) / f"{spec.variant_name}_{split}"
        items = prepare_slices(spec, data.datalist.items(split), out, data.class_names).items
        cap = spec.interaction.max_val_samples
        if split == "validation" and cap and len(items) > cap:
            # Evenly spaced through the list, so every object and level stays represented.
            items = [items[round(i * len(items) / cap)] for i in range(cap)]
        return items

    def transforms(self, spec):
        from fedseg.deepgrow.transforms import slice_eval_transforms, slice_train_transforms

        return slice_train_transforms, slice_eval_transforms

    def session(self, spec, seed):
        return ClickSession(spec, seed)


KINDS = {kind.name: kind for kind in (Segmentation(), Interactive())}


def task_kind(spec: TaskSpec) -> Segmentation:
    return KINDS[spec.kind]
