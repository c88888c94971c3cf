"""``fedseg export``: a trained model leaves fedseg as a MONAI bundle.

The bundle is what the MONAI ecosystem runs (``python -m monai.bundle run``, MONAI Label, Deploy):
``configs/metadata.json`` (labels, channels, spacing, the network's input and output, and the
training provenance: fedseg version, job, rounds and number of sites, never site names or paths),
``configs/inference.json`` (the task's preprocessing, sliding window and the way back to the
input's grid, as ``fedseg infer`` does them), ``models/model.pt`` (the state dict) and
``models/model.ts`` (TorchScript, written by MONAI's own ``ckpt_export``).

The config is written from the task spec with the same rules as :mod:`fedseg.transforms`; a test
checks that both give the same network input and the same mask.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedseg.checkpoint import read_model_file, state_for
from fedseg.tasks.spec import TaskSpec

META_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
RAS_LABELS = [["L", "R"], ["P", "A"], ["I", "S"]]


def _intensity(spec: TaskSpec) -> dict:
    it = spec.intensity
    if it.kind == "window":
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": it.a_min, "a_max": it.a_max,
                "b_min": 0.0, "b_max": 1.0, "clip": True}
    if it.kind == "scale01":
        return {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0}
    if it.kind == "zscore":
        return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}
    return {"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": it.subtrahend, "divisor": it.divisor}


def preprocessing_config(spec: TaskSpec) -> list[dict]:
    """The inference preprocessing of :func:`fedseg.transforms.preprocessing`, as bundle config items."""
    steps = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, "ensure_channel_first": True},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"[: spec.spatial_dims],
         "labels": RAS_LABELS[: spec.spatial_dims]},
        {"_target_": "Spacingd", "keys": "image", "pixdim": list(spec.spacing), "mode": "bilinear"},
    ]
    crop = {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "allow_smaller": True,
            "start_coord_key": None, "end_coord_key": None}
    # As in fedseg.transforms: an MR z-score is negative in half the body, so MR is cropped first.
    crop_first = spec.crop_foreground and spec.intensity.kind == "zscore"
    steps += [crop, _intensity(spec)] if crop_first else [_intensity(spec)] + ([crop] if spec.crop_foreground else [])
    if spec.intensity.per_case:
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True})
    steps.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return steps


def inference_config(spec: TaskSpec) -> dict[str, Any]:
    """``configs/inference.json``: every ``*.nii.gz`` of ``dataset_dir`` segmented into ``output_dir``."""
    net = spec.network
    return {
        "imports": ["$import glob", "$import os", "$import numpy"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*'))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": net.spatial_dims, "in_channels": spec.in_channels,
                        "out_channels": spec.out_channels, "channels": list(net.channels),
                        "strides": list(net.strides), "num_res_units": net.num_res_units, "norm": net.norm},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_config(spec)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(spec.sw_roi),
                    "sw_batch_size": spec.sw_batch_size, "overlap": spec.sw_overlap, "mode": "gaussian"},
        # Probabilities go back to the input's grid (crop undone with zeros: background), then argmax,
        # as fedseg infer does.
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False},
        ]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}, "map_location": "@device"}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "run": ["$@evaluator.run()"],
    }


def metadata(spec: TaskSpec, class_names: tuple[str, ...], provenance: dict) -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's bundle metadata format, with fedseg's provenance added."""
    import monai
    import numpy

    import fedseg

    image_format = "hounsfield" if spec.modality == "CT" else "magnitude"
    return {
        "schema": META_SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by fedseg"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": __import__("nibabel").__version__},
        "name": f"fedseg {spec.name} segmentation ({spec.variant_name})",
        "task": f"{spec.name} segmentation: {', '.join(class_names[1:])}",
        "description": f"fedseg's {spec.name} task ({spec.variant_name} variant), exported from a trained model",
        "authors": "fedseg",
        "copyright": "see the training consortium's agreement",
        "data_type": "nibabel",
        "intended_use": "research; validate on your own data before any other use",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": image_format, "modality": spec.modality,
                "num_channels": spec.in_channels, "spatial_shape": list(spec.sw_roi), "dtype": "float32",
                "value_range": [0, 1] if spec.intensity.kind == "window" and not spec.intensity.per_case else [],
                "is_patch_data": True, "channel_def": {str(i): m for i, m in enumerate(_channel_names(spec))},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": spec.out_channels,
                "spatial_shape": list(spec.sw_roi), "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": True, "channel_def": {str(i): n for i, n in enumerate(class_names)},
            }},
        },
        "fedseg": {"version": fedseg.__version__, "task": spec.name, "variant": spec.variant_name,
                   "spacing_mm": list(spec.spacing), **provenance},
    }


def _channel_names(spec: TaskSpec) -> list[str]:
    return ["T2", "ADC"][: spec.in_channels] if spec.in_channels == 2 else [spec.modality]


def model_provenance(payload: dict, run_dir: Path | None = None) -> dict:
    """What trained the model, with no site names or paths: the model file's own record (``payload``, from
    :func:`~fedseg.checkpoint.read_model_file`), and a run's results."""
    meta = payload.get("meta_props") if isinstance(payload.get("meta_props"), dict) else {}
    out: dict[str, Any] = {}
    for key in ("epoch", "round"):
        if isinstance(payload.get(key), int):
            out[key] = payload[key]
    if isinstance(meta.get("current_round"), int):
        out["federated_round"] = meta["current_round"]
    if run_dir is not None:
        results = json.loads((Path(run_dir) / "results.json").read_text())
        for key in ("algorithm", "rounds", "local_epochs", "epochs", "mode", "best_round", "best_epoch"):
            if key in results:
                out[key] = results[key]
        sites = results.get("sites")
        out["sites_count"] = sites if isinstance(sites, int) else len(sites or [])
        job_name = results.get("job_name") or (f"{results['task']}_{results['algorithm']}" if "algorithm" in results else None)
        if job_name:
            out["job"] = job_name
    return out


def export_bundle(spec: TaskSpec, model_path: Path, out_dir: Path, *, class_names: tuple[str, ...] | None = None,
                  run_dir: Path | None = None) -> Path:
    """Write a MONAI bundle for ``spec``'s network with the weights in ``model_path`` (refused if they do not fit)."""
    from monai.bundle import ckpt_export

    payload = read_model_file(model_path)
    state = state_for(payload, spec, Path(model_path))
    out_dir = Path(out_dir)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    names = tuple(class_names or spec.labels)
    meta_file, config_file = out_dir / "configs" / "metadata.json", out_dir / "configs" / "inference.json"
    meta_file.write_text(json.dumps(metadata(spec, names, model_provenance(payload, run_dir)), indent=2))
    config_file.write_text(json.dumps(inference_config(spec), indent=2))
    torch.save(state, out_dir / "models" / "model.pt")
    ckpt_export(net_id="network_def", filepath=str(out_dir / "models" / "model.ts"),
                ckpt_file=str(out_dir / "models" / "model.pt"), meta_file=str(meta_file), config_file=str(config_file))
    return out_dir
