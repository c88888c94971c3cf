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
validated on load against a pydantic schema (strict: ``"2"`` is not a number, ``true`` not a count);
every problem is reported at once, naming the site, the key and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedseg.backends import backend_names
from fedseg.errors import ConfigError

# Arithmetic precision a site may ask for (resolved per device in fedseg.engine.runtime).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

ENV_DIR = "FEDSEG_SITE_CONFIG_DIR"
KIT_FILE = Path("local") / "fedseg_site.yaml"


class _Schema(BaseModel):
    # strict: YAML's `yes` or "2" is not silently a bool or an int; every field says what it allows
    # in its description, which is what the error messages quote.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RaySettings(_Schema):
    """How a site with ``backend: ray`` reaches its Ray cluster."""

    workers: int = Field(2, ge=1, le=1024, description="a whole number >= 1")
    gpus_per_worker: float = Field(0.0, ge=0, le=16, description="a number from 0 to 16")
    address: str | None = Field(None, min_length=1, description="'auto', 'ray://host:port' or omitted")
    # The longest one FL round's fit() may take before the site stops its Ray and withholds the round.
    round_timeout_s: float = Field(4 * 3600.0, ge=1, le=7 * 24 * 3600, description="seconds from 1 to 604800")


class _DatasetEntry(_Schema):
    data_root: str = Field(min_length=1, description="a path relative to this file")
    datalist: str = Field(min_length=1, description="a path relative to this file")
    max_voxels: int | None = Field(None, ge=1, description="a whole number of voxels >= 1")


class _SiteFile(_Schema):
    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="a site name of letters, digits, '-', '_', '.'")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$", description="one of auto, cpu, cuda, cuda:N")
    precision: Literal[PRECISIONS] = Field("auto", description="one of " + ", ".join(PRECISIONS))
    num_threads: int | None = Field(None, ge=1, description="a whole number >= 1 (or omit it)")
    cache_rate: float = Field(1.0, ge=0, le=1, description="a number from 0 to 1")
    num_workers: int = Field(0, ge=0, le=64, description="a whole number from 0 to 64")
    backend: str = Field("local", description="one of " + ", ".join(backend_names()))
    ray: RaySettings = Field(default_factory=RaySettings,
                             description="a mapping with workers, gpus_per_worker, address, round_timeout_s")
    cache_dir: str | None = Field(None, min_length=1,
                                  description="a folder path (relative to this file) for derived data")
    datasets: dict[str, _DatasetEntry] = Field(
        min_length=1, description="a non-empty mapping of task name to data_root and datalist")
    training_only: bool = Field(False, description="true or false")
    symlinks_outside_root: Literal["refuse", "warn"] = Field("refuse", description="'refuse' or 'warn'")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in backend_names():
            raise ValueError("unknown backend")
        return value


@dataclass(frozen=True)
class TaskData:
    """Where one task's data lives at this site."""

    data_root: Path
    datalist: Path
    max_voxels: int | None = None  # the site's own size limit for one volume (None: the task's)


@dataclass(frozen=True)
class SiteConfig:
    """A validated site YAML, with its paths resolved against the file's folder."""

    site: str
    path: Path
    datasets: dict[str, TaskData]
    device: str = "auto"
    precision: str = "auto"
    num_threads: int | None = None
    cache_rate: float = 1.0
    num_workers: int = 0
    backend: str = "local"
    ray: RaySettings = RaySettings()
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


def _problem(error: dict) -> str:
    """One pydantic error as fedseg says it: where, the key, what is allowed, what was given."""
    loc = [str(part) for part in error["loc"]]
    model: type[BaseModel] = _SiteFile
    where = ""
    if loc[:1] == ["ray"] and len(loc) > 1:
        model, where, loc = RaySettings, "ray: ", loc[1:]
    elif loc[:1] == ["datasets"] and len(loc) > 1:
        model, where, loc = _DatasetEntry, f"datasets.{loc[1]}: ", loc[2:]
        if not loc:
            return f"{where}must be a mapping with data_root and datalist, got {error['input']!r}"[:300]
    key = loc[0]
    if error["type"] == "extra_forbidden":
        return f"{where}unknown key {key!r}; allowed keys: {', '.join(model.model_fields)}"
    allowed = model.model_fields[key].description
    if error["type"] == "missing":
        return f"{where}missing required key {key!r} ({allowed})"
    return f"{where}{key!r} must be {allowed}, got {error['input']!r}"[:300]


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
    try:
        parsed = _SiteFile.model_validate(raw)
    except ValidationError as exc:
        # One problem per key: a union type (int or None) reports each of its members.
        errors = list(dict.fromkeys(_problem(e) for e in exc.errors()))
        raise ConfigError(f"{label} has {len(errors)} problem(s):\n  - " + "\n  - ".join(errors)) from None
    base = path.parent
    return SiteConfig(
        site=parsed.site, path=path.resolve(),
        datasets={task: TaskData((base / d.data_root).resolve(), (base / d.datalist).resolve(), d.max_voxels)
                  for task, d in parsed.datasets.items()},
        device=parsed.device, precision=parsed.precision, num_threads=parsed.num_threads,
        cache_rate=float(parsed.cache_rate), num_workers=parsed.num_workers, backend=parsed.backend, ray=parsed.ray,
        cache_dir=(base / parsed.cache_dir).resolve() if parsed.cache_dir else None,
        training_only=parsed.training_only, symlinks_outside_root=parsed.symlinks_outside_root,
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
