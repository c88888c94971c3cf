"""Model files: written with their task, read back safely and checked against the task's network.

Files are always read with ``torch.load(weights_only=True)``: a model file can carry tensors and
plain containers, never code. Accepted layouts: fedseg's own ``{"state_dict", "task", ...}``,
NVFlare's persistor files (``{"model": state_dict, ...}``, e.g. ``FL_global_model.pt``), a bare
state dict, and (as a starting point) a MONAI bundle folder, whose ``models/model.pt`` holds the
network's state dict (``module.``-prefixed when saved from DistributedDataParallel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from fedseg.errors import CheckpointError
from fedseg.networks import build_network
from fedseg.tasks.spec import TaskSpec


def save_model(path: Path, weights: Mapping[str, torch.Tensor], spec: TaskSpec, **info) -> Path:
    """Save weights with the task, variant, recipe levers and class names they belong to (plus any plain ``info``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": {k: v.detach().cpu() for k, v in weights.items()}, "task": spec.name,
               "variant": spec.variant_name, "labels": list(spec.labels),
               "recipe": [list(pair) for pair in spec.levers], **info}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated model behind
    return path


# How a PyTorch model file starts: torch.save's zip archive, or the legacy format's pickle protocol byte.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80


def save_seeded_model(path: Path, spec: TaskSpec, seed: int) -> Path:
    """The network ``spec`` builds from ``seed``, saved once at ``path``: the one start every method or
    trial of that seed shares (the FL server's persistor loads it as the initial global model)."""
    path = Path(path)
    if not path.is_file():
        from fedseg.engine import Runtime, SegmentationEngine  # the engine saves models: imported late

        engine = SegmentationEngine(spec, Runtime.create("cpu", num_threads=1), seed=seed)
        save_model(path, engine.get_weights(), spec, seed=seed)
    return path


def sniff_model_file(path: Path) -> str | None:
    """Why ``path`` is not a PyTorch model file, judged from its first bytes; None when it may be one.

    Spares the user torch's messages for such files (``KeyError: 101`` for text, or advice to retry
    without ``weights_only``, which would let the file run code).
    """
    with open(path, "rb") as fh:
        head = fh.read(352)
    if not head:
        return "it is empty"
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTOCOL:
        return None
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed data (a .nii.gz image?)"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "it is a NIfTI image"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (a Keras or other framework's model?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "its contents are not a PyTorch file (no zip archive or pickle header)"
    if text.lstrip().startswith(("{", "[")):
        return "it is a text file (JSON?)"
    return "it is a text file"


def read_model_file(path: Path) -> dict:
    """Load a model file safely; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: model file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a model file: it is a folder or another non-regular file")
    try:
        reason = sniff_model_file(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    if reason is not None:
        raise CheckpointError(f"{path}: not a model file: {reason}; give a .pt file written by fedseg or NVFlare")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a loadable weights-only model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of weights, found {type(payload).__name__}")
    return dict(payload)


def extract_state_dict(payload: Mapping, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if key in payload and isinstance(payload[key], Mapping):
            payload = payload[key]
            break
    state = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors (keys: {sorted(payload)[:8]})")
    return state


def check_fits(state: Mapping[str, torch.Tensor], spec: TaskSpec, path: Path) -> None:
    """Refuse weights whose keys or shapes do not match the task's network, listing every mismatch."""
    expected = {k: tuple(v.shape) for k, v in build_network(spec).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k} {expected[k]}" for k in expected if k not in got]
    problems += [f"unexpected {k} {got[k]}" for k in got if k not in expected]
    problems += [f"{k}: shape {got[k]} but the network needs {expected[k]}"
                 for k in expected if k in got and got[k] != expected[k]]
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise CheckpointError(
            f"{path}: does not fit task {spec.name!r} ({spec.variant_name} variant); {len(problems)} mismatch(es):\n  "
            + "\n  ".join(shown)
        )


def load_model(path: Path, spec: TaskSpec) -> dict[str, torch.Tensor]:
    """Read weights for ``spec`` from any accepted layout, refusing files that do not fit it."""
    return state_for(read_model_file(path), spec, Path(path))


def state_for(payload: Mapping, spec: TaskSpec, path: Path) -> dict[str, torch.Tensor]:
    """The weights for ``spec`` in a model file's ``payload`` (from :func:`read_model_file`), refused if they do not fit."""
    if "task" in payload and payload["task"] != spec.name:
        raise CheckpointError(f"{path}: trained for task {payload['task']!r}, not {spec.name!r}")
    state = extract_state_dict(payload, path)
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    check_fits(state, spec, path)
    return state


def model_variant(path: Path) -> str | None:
    """The variant recorded in a fedseg model file, if it records one."""
    payload = read_model_file(path)
    variant = payload.get("variant")
    return variant if isinstance(variant, str) else None


BUNDLE_WEIGHTS = Path("models") / "model.pt"


def load_initial_model(path: Path, spec: TaskSpec) -> dict[str, torch.Tensor]:
    """Weights to start a run from: a fedseg or NVFlare model file, or a MONAI bundle (its folder or its
    ``models/model.pt``). Refused, with every mismatch listed, unless they fit the task's network."""
    path = Path(path)
    if path.is_dir():
        if not (path / BUNDLE_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: a folder, but not a MONAI bundle (no {BUNDLE_WEIGHTS})")
        path = path / BUNDLE_WEIGHTS
    return state_for(read_model_file(path), spec, path)


def save_nvflare_checkpoint(path: Path, weights: Mapping[str, torch.Tensor]) -> Path:
    """Weights in the layout NVFlare's PyTorch persistor loads as a job's initial model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu() for k, v in weights.items()}}, path)
    return path
