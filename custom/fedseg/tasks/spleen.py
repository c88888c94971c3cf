"""Spleen CT, after the Clara Train 4.1 spleen card (the newer, Novograd + DiceCE recipe)."""

from fedseg.tasks.parts import FLSchedule, PhantomSpec
from fedseg.tasks.spec import AugmentSpec, IntensitySpec, NetworkSpec, OptimizerSpec, SmallVariant, TaskSpec

TASK = TaskSpec(
    name="spleen",
    description="Spleen in abdominal CT (MSD Task09 layout), 2 classes",
    modality="CT",
    in_channels=1,
    labels=("background", "spleen"),
    spacing=(1.5, 1.5, 2.0),
    # Soft-tissue window of the card: -57..164 HU to 0..1, clipped.
    intensity=IntensitySpec(kind="window", a_min=-57.0, a_max=164.0),
    patch_size=(96, 96, 96),
    num_samples=4,
    batch_size=2,
    augment=AugmentSpec(shift_offset=0.1, shift_prob=0.5),
    network=NetworkSpec(spatial_dims=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2),
    loss="dicece",
    optimizer=OptimizerSpec("novograd", 2e-3),
    # The older card (000_*) trained with Adam at 2e-4.
    optimizer_choices=(OptimizerSpec("adam", 2e-4),),
    sw_roi=(96, 96, 96),
    sw_overlap=0.5,
    sw_batch_size=4,
    plausible_range=(-1024.0, 3071.0),
    small=SmallVariant(spacing=(3.0, 3.0, 4.0), patch_size=(48, 48, 48)),
)

PHANTOM = PhantomSpec("Task09_Spleen_synthetic", "Synthetic abdominal CT phantoms with spleen labels (fedseg)",
                      organs=(("spleen", 1),))
SCHEDULE = FLSchedule(num_rounds=20, local_epochs=6)
