"""A trained model leaves fedseg as a MONAI bundle that MONAI runs to the same mask as ``fedseg infer``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REAL
from fedseg.bundle import export_bundle, inference_config
from fedseg.cli import main
from fedseg.errors import CheckpointError
from fedseg.tasks import get_task
from fedseg.transforms import eval_transforms

SPEC = get_task("spleen", "tiny")
SCHEMA = Path(__file__).parent / "data" / "bundle_meta_schema.json"


@pytest.fixture(scope="module")
def bundle(trained_spleen, tmp_path_factory) -> Path:
    """Written by ``fedseg export``, as a user would (the variant found from the model file)."""
    _, _, model = trained_spleen
    out = tmp_path_factory.mktemp("bundle") / "spleen_tiny"
    assert main(["export", "--task", "spleen", "--model", str(model), "--out", str(out)]) == 0
    return out


def test_export_never_writes_over_an_earlier_bundle(bundle, trained_spleen, capsys):
    _, _, model = trained_spleen
    args = ["export", "--task", "spleen", "--model", str(model), "--out", str(bundle)]
    assert main(args) == 2 and "not empty" in capsys.readouterr().err
    (bundle / "models" / "model.ts").unlink()
    assert main([*args, "--overwrite"]) == 0 and (bundle / "models" / "model.ts").is_file()


def test_the_bundle_holds_metadata_config_weights_and_torchscript(bundle):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "spleen"}
    assert meta["fedseg"]["spacing_mm"] == list(SPEC.spacing) and "site" not in json.dumps(meta["fedseg"])
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    x = torch.rand(1, 1, *SPEC.sw_roi)
    net = torch.jit.load(str(bundle / "models" / "model.ts")).eval()
    assert scripted(x).shape == (1, 2, *SPEC.sw_roi) and torch.allclose(net(x), scripted.eval()(x), atol=1e-5)


def test_monai_verifies_the_network_and_the_metadata(bundle, tmp_path):
    from monai.bundle import verify_metadata, verify_net_in_out

    config, meta = str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu")
    # The published schema cannot be downloaded here; MONAI uses a schema already at `filepath`.
    schema = tmp_path / "schema.json"
    shutil.copyfile(SCHEMA, schema)
    verify_metadata(meta_file=meta, filepath=str(schema))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({k: v for k, v in json.loads(Path(meta).read_text()).items() if k != "task"}))
    with pytest.raises(Exception, match="task"):
        verify_metadata(meta_file=str(broken), filepath=str(schema))


def test_the_bundles_preprocessing_is_fedsegs(bundle):
    from monai.bundle import ConfigParser

    parser = ConfigParser(inference_config(SPEC))
    theirs = parser.get_parsed_content("preprocessing")({"image": str(REAL / "ct.nii.gz")})["image"]
    ours = eval_transforms(SPEC, with_label=False)({"image": str(REAL / "ct.nii.gz")})["image"]
    assert theirs.shape == ours.shape and torch.allclose(torch.as_tensor(theirs), torch.as_tensor(ours), atol=1e-6)


def test_monai_bundle_run_gives_fedseg_infers_mask(bundle, trained_spleen, tmp_path):
    from fedseg.engine import Runtime
    from fedseg.infer import Predictor

    _, _, model = trained_spleen
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(REAL / "ct.nii.gz", data / "ct.nii.gz")
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                           "--dataset_dir", str(data), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = nib.load(str(next(out.glob("*seg.nii.gz"))))
    ours_path = Predictor(SPEC, model, Runtime.create("cpu", num_threads=2)).segment(REAL / "ct.nii.gz",
                                                                                      tmp_path / "fedseg.nii.gz")
    ours = nib.load(str(ours_path))
    a, b = np.asarray(theirs.dataobj).squeeze(), np.asarray(ours.dataobj)
    assert a.shape == b.shape and np.allclose(theirs.affine, ours.affine, atol=1e-4)
    assert b.sum() > 0  # the model finds spleen, so agreement is not just background
    assert (a == b).mean() >= 0.999, (a == b).mean()


def test_a_model_that_does_not_fit_is_not_exported(trained_spleen, tmp_path):
    _, _, model = trained_spleen
    with pytest.raises(CheckpointError, match="does not fit"):
        export_bundle(get_task("spleen", "full"), model, tmp_path / "b")
