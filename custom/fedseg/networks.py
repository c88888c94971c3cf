"""Networks built from a task spec.

:class:`TaskNetwork` is the class NVFlare's server-side persistor instantiates from a job's
``{"path": "fedseg.networks.TaskNetwork", "args": {"task": ..., "variant": ...}}``: the job names
the task, never the architecture, so channels and strides live only in the task spec.
"""

from __future__ import annotations

from monai.networks.nets import UNet

# Normalization layers of MONAI's UNet (the "N" of each ADN block): parameters and running statistics.
NORM_LAYERS = r"\.adn\.N\."

from fedseg.tasks import get_task
from fedseg.tasks.spec import TaskSpec


def unet_kwargs(spec: TaskSpec) -> dict:
    net = spec.network
    return dict(
        spatial_dims=net.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=net.channels,
        strides=net.strides,
        num_res_units=net.num_res_units,
        norm=net.norm,
    )


class TaskNetwork(UNet):
    """The UNet a task declares, constructible from its name (state-dict keys equal MONAI's UNet).

    ``norm`` is the recipe's normalization-layer lever (``fedseg.tasks.spec.LEVERS``), the one lever
    that changes the network's structure; ``None`` is the card's.
    """

    def __init__(self, task: str, variant: str = "full", norm: str | None = None):
        spec = get_task(task, variant)
        super().__init__(**unet_kwargs(spec.with_levers({"norm": norm}) if norm else spec))
        # Kept as attributes: NVFlare's job exporter reads constructor arguments back from them
        # (``norm`` too: UNet keeps the norm it was built with there, which is this lever's value).
        self.task, self.variant = task, variant


def build_network(spec: TaskSpec) -> UNet:
    return UNet(**unet_kwargs(spec))


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
