"""fedseg: federated 3D medical image segmentation on NVFlare and MONAI."""

__version__ = "0.1.0"
