"""fedseg: federated 3D medical image segmentation on NVFlare and MONAI."""

import logging
import warnings

__version__ = "0.1.0"

# With pydicom installed (the dicom extra), every MONAI LoadImage() builds its nvImageCodec DICOM
# reader, which logs and warns on each construction when no GPU decoder is present; fedseg decodes
# DICOM with pydicom's own plugins, so neither message says anything to act on.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
