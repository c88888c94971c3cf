"""Liver and tumour CT, after the Clara Train 4.1 liver and tumour card (001_*)."""

from fedseg.tasks.parts import FLSchedule, PhantomSpec
from fedseg.tasks.spec import AugmentSpec, IntensitySpec, NetworkSpec, OptimizerSpec, SmallVariant, TaskSpec

TASK = TaskSpec(
    name="liver",
    description="Liver and liver tumour in abdominal CT (MSD Task03 layout), 3 classes",
    modality="CT",
    in_channels=1,
    labels=("background", "liver", "tumour"),
    spacing=(1.0, 1.0, 1.0),
    # "Intensities scaled to 0..1": the liver window of Clara's and MONAI's liver recipes.
    intensity=IntensitySpec(kind="window", a_min=-21.0, a_max=189.0),
    patch_size=(96, 96, 96),
    num_samples=4,
    # The card centres crops on foreground or background 1:1; tumours are then rarely a crop's centre.
    # Sampling background, liver and tumour 1:1:2 lets the small class be learnt.
    class_crop_ratios=(1.0, 1.0, 2.0),
    batch_size=2,
    augment=AugmentSpec(flip_prob=0.1, rotate90_prob=0.1, shift_offset=0.1, shift_prob=0.5),
    network=NetworkSpec(spatial_dims=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2),
    # The card trains with Dice loss; DiceCE (plus tumour-weighted crops) is what let phantom tumours be
    # learnt at all on the tiny variant, so it is the default here.
    loss="dicece",
    optimizer=OptimizerSpec("adam", 5e-4),
    sw_roi=(160, 160, 160),
    sw_batch_size=1,
    # A case without tumour in its label is left out of the tumour mean (MONAI's ignore_empty, as the
    # card's figures were computed); a tumour predicted in such a case is counted as a false positive.
    empty_class_dice="nan",
    small=SmallVariant(spacing=(2.5, 2.5, 3.0), patch_size=(48, 48, 48), sw_roi=(80, 80, 80)),
)

PHANTOM = PhantomSpec("Task03_Liver_synthetic",
                      "Synthetic abdominal CT phantoms with liver and 0-3 liver tumours (fedseg)",
                      organs=(("liver", 1), ("liver_tumour", 2)), tumours=(0, 3))
SCHEDULE = FLSchedule(num_rounds=20, local_epochs=6)
