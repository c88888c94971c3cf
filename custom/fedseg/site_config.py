"""Site configuration: one YAML per site holding the facts only the site knows.

Example (``site_configs/site-1.yaml``)::

    site: site-1
    device: auto          # auto | cpu | cuda | cuda:N
    precision: auto       # auto | fp32 | bf16 | fp16 (auto: fp16 AMP on CUDA, fp32 on CPU)
    num_threads: 1        # torch CPU threads; omit for torch's default
    cache_rate: 1.0       # fraction of preprocessed volumes kept in memory
    num_workers: 0        # data-loading threads
    cache_dir: .cache     # derived data such as Deepgrow 2D slices (default .fedseg_cache/<site>)
    training_only: false  # true: this site has no validation cases on purpose
    symlinks_outside_root: refuse  # refuse | warn: files reached through a symlink leading out of data_root
    backend: local        # where training runs: local | ray (fedseg.backends)
    ray:                  # only for backend: ray
      workers: 2
      gpus_per_worker: 0
      round_timeout_s: 14400  # an FL round on Ray longer than this is stopped and withheld
    datasets:
      spleen:
        data_root: ../data/spleen                 # relative paths are relative to this file
        datalist: ../data/spleen/splits/site-1.json
        max_voxels: 268435456                     # optional: largest volume (default: the task's limit)

Relative paths resolve against the YAML file's folder. The file is read with a safe loader and
validated on load; every problem is reported at once, naming the site, the key and what is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from fedseg.backends import backend_names
from fedseg.errors import ConfigError

# Arithmetic precision a site may ask for (resolved per device in fedseg.engine.runtime).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

ENV_DIR = "FEDSEG_SITE_CONFIG_DIR"
KIT_FILE = Path("local") / "fedseg_site.yaml"
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class TaskData:
    """Where one task's data lives at this site."""

    data_root: Path
    datalist: Path
    max_voxels: int | None = None  # the site's own size limit for one volume (None: the task's)


@dataclass(frozen=True)
class RaySettings:
    """How a site with ``backend: ray`` reaches its Ray cluster."""

    workers: int = 2
    gpus_per_worker: float = 0.0
    address: str | None = None
    # The longest one FL round's fit() may take before the site stops its Ray and withholds the round.
    round_timeout_s: float = 4 * 3600.0


@dataclass(frozen=True)
class SiteConfig:
    site: str
    path: Path
    datasets: dict[str, TaskData]
    device: str = "auto"
    precision: str = "auto"
    num_threads: int | None = None
    cache_rate: float = 1.0
    num_workers: int = 0
    backend: str = "local"
    ray: RaySettings = field(default_factory=RaySettings)
    cache_dir: Path | None = None
    training_only: bool = False
    symlinks_outside_root: str = "refuse"

    def derived_dir(self, task: str) -> Path:
        """Where data derived from the site's own (e.g. Deepgrow's 2D slices) is written: it stays at the site."""
        return (self.cache_dir or self.path.parent / ".fedseg_cache" / self.site) / task

    def task_data(self, task: str) -> TaskData:
        """The data for ``task``, or a :class:`ConfigError` naming the site and the tasks it has."""
        try:
            return self.datasets[task]
        except KeyError:
            have = ", ".join(sorted(self.datasets)) or "none"
            raise ConfigError(
                f"site {self.site!r} ({self.path}): no dataset for task {task!r} under 'datasets' (it has: {have})"
            ) from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# key -> (check, what is allowed); "site" and "datasets" are required.
_TOP: dict[str, tuple[Callable[[Any], bool], str]] = {
    "site": (lambda v: isinstance(v, str) and bool(_SITE_NAME.match(v)), "a site name of letters, digits, '-', '_', '.'"),
    "device": (lambda v: isinstance(v, str) and bool(_DEVICE.match(v)), "one of auto, cpu, cuda, cuda:N"),
    "precision": (lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "num_threads": (lambda v: v is None or (_is_int(v) and v >= 1), "a whole number >= 1 (or omit it)"),
    "cache_rate": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number from 0 to 1"),
    "num_workers": (lambda v: _is_int(v) and 0 <= v <= 64, "a whole number from 0 to 64"),
    "backend": (lambda v: v in backend_names(), "one of " + ", ".join(backend_names())),
    "ray": (lambda v: isinstance(v, dict), "a mapping with workers, gpus_per_worker, address, round_timeout_s"),
    "cache_dir": (lambda v: isinstance(v, str) and bool(v), "a folder path (relative to this file) for derived data"),
    "datasets": (lambda v: isinstance(v, dict) and bool(v), "a non-empty mapping of task name to data_root and datalist"),
    "training_only": (lambda v: isinstance(v, bool), "true or false"),
    "symlinks_outside_root": (lambda v: v in ("refuse", "warn"), "'refuse' or 'warn'"),
}
_RAY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "workers": (lambda v: _is_int(v) and 1 <= v <= 1024, "a whole number >= 1"),
    "gpus_per_worker": (lambda v: _is_number(v) and 0 <= v <= 16, "a number from 0 to 16"),
    "address": (lambda v: v is None or (isinstance(v, str) and bool(v)), "'auto', 'ray://host:port' or omitted"),
    "round_timeout_s": (lambda v: _is_number(v) and 1 <= v <= 7 * 24 * 3600, "seconds from 1 to 604800"),
}
_DATASET_KEYS = ("data_root", "datalist")
_DATASET_OPTIONAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_voxels": (lambda v: _is_int(v) and v >= 1, "a whole number of voxels >= 1"),
}


def _check_keys(raw: dict, allowed: dict, where: str, errors: list[str]) -> None:
    for key in raw:
        if key not in allowed:
            errors.append(f"{where}unknown key {key!r}; allowed keys: {', '.join(allowed)}")
    for key, value in raw.items():
        if key in allowed and not allowed[key][0](value):
            errors.append(f"{where}{key!r} must be {allowed[key][1]}, got {value!r}")


def load_site_config(path: Path) -> SiteConfig:
    """Read and validate a site YAML; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"site config {path} not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"site config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"site config {path} must be a YAML mapping of keys to values")
    site = raw.get("site")
    label = f"site {site!r} ({path})" if isinstance(site, str) else f"site config {path}"
    errors: list[str] = []
    for required in ("site", "datasets"):
        if required not in raw:
            errors.append(f"missing required key {required!r}")
    _check_keys(raw, _TOP, "", errors)
    ray_raw = raw.get("ray") or {}
    if isinstance(ray_raw, dict):
        _check_keys(ray_raw, _RAY, "ray: ", errors)
    datasets: dict[str, TaskData] = {}
    if isinstance(raw.get("datasets"), dict):
        for task, entry in raw["datasets"].items():
            where = f"datasets.{task}: "
            if not isinstance(entry, dict):
                errors.append(f"{where}must be a mapping with {' and '.join(_DATASET_KEYS)}")
                continue
            for key in entry:
                if key not in _DATASET_KEYS and key not in _DATASET_OPTIONAL:
                    errors.append(f"{where}unknown key {key!r}; allowed keys: "
                                  f"{', '.join((*_DATASET_KEYS, *_DATASET_OPTIONAL))}")
                elif key in _DATASET_OPTIONAL and not _DATASET_OPTIONAL[key][0](entry[key]):
                    errors.append(f"{where}{key!r} must be {_DATASET_OPTIONAL[key][1]}, got {entry[key]!r}")
            for key in _DATASET_KEYS:
                if not isinstance(entry.get(key), str) or not entry.get(key):
                    errors.append(f"{where}{key!r} must be a path (relative to {path.parent})")
            if not any(e.startswith(where) for e in errors):
                base = path.parent
                datasets[str(task)] = TaskData(
                    data_root=(base / entry["data_root"]).resolve(), datalist=(base / entry["datalist"]).resolve(),
                    max_voxels=entry.get("max_voxels"),
                )
    if errors:
        raise ConfigError(f"{label} has {len(errors)} problem(s):\n  - " + "\n  - ".join(errors))
    return SiteConfig(
        site=raw["site"],
        path=path.resolve(),
        datasets=datasets,
        device=raw.get("device", "auto"),
        precision=raw.get("precision", "auto"),
        num_threads=raw.get("num_threads"),
        cache_rate=float(raw.get("cache_rate", 1.0)),
        num_workers=int(raw.get("num_workers", 0)),
        backend=raw.get("backend", "local"),
        ray=RaySettings(**ray_raw) if isinstance(ray_raw, dict) else RaySettings(),
        cache_dir=(path.parent / raw["cache_dir"]).resolve() if raw.get("cache_dir") else None,
        training_only=raw.get("training_only", False),
        symlinks_outside_root=raw.get("symlinks_outside_root", "refuse"),
    )


def repository_site_configs() -> Path | None:
    """``site_configs/`` of the source checkout fedseg runs from, if it runs from one."""
    candidate = Path(__file__).resolve().parents[2] / "site_configs"
    return candidate if candidate.is_dir() else None


def find_site_config(site: str, workspace: Path | None = None) -> Path:
    """Locate a site's YAML for the NVFlare client.

    Looked for, in order:
      1. ``$FEDSEG_SITE_CONFIG_DIR/<site>.yaml`` when that variable is set (and nowhere else then);
      2. ``<client workspace>/local/fedseg_site.yaml``: the site's own startup kit in a real deployment;
      3. ``site_configs/<site>.yaml`` of the source checkout (the simulator demo's default).
    """
    env_dir = os.environ.get(ENV_DIR)
    if env_dir:
        candidate = Path(env_dir) / f"{site}.yaml"
        if candidate.is_file():
            return candidate
        raise ConfigError(f"no site config for site {site!r}: {candidate} does not exist ({ENV_DIR}={env_dir})")
    tried: list[Path] = []
    candidate = Path(workspace or Path.cwd()) / KIT_FILE
    if candidate.is_file():
        return candidate
    tried.append(candidate)
    repo = repository_site_configs()
    if repo is not None:
        candidate = repo / f"{site}.yaml"
        if candidate.is_file():
            return candidate
        tried.append(candidate)
    raise ConfigError(
        f"no site config for site {site!r}; looked at: {', '.join(map(str, tried))}. "
        f"Set {ENV_DIR} to a folder holding {site}.yaml, or put the file at {KIT_FILE} in the site's workspace."
    )


def write_site_config(path: Path, site: str, datasets: dict[str, tuple[Path, Path]], **settings) -> Path:
    """Write a site YAML whose dataset paths are relative to the file (so the folder can move as a whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    body: dict[str, Any] = {"site": site, **settings, "datasets": {
        task: {"data_root": os.path.relpath(Path(root).resolve(), base),
               "datalist": os.path.relpath(Path(datalist).resolve(), base)}
        for task, (root, datalist) in datasets.items()
    }}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    load_site_config(path)  # what we write must load
    return path
