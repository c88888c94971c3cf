"""The site's own choices that change what the data check refuses (from the site YAML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from fedseg.site_config import SiteConfig

SymlinkPolicy = Literal["refuse", "warn"]


@dataclass(frozen=True)
class CheckPolicy:
    """What a site allows: defaults are the strict choices.

    ``training_only``: the site has no validation cases on purpose (an empty validation split is
    then not fatal). ``symlinks_outside_root``: a file whose symlink leads out of the data root is
    refused (default) or only warned about. ``max_voxels``: the site's own size limit for one
    volume, replacing the task's.
    """

    training_only: bool = False
    symlinks_outside_root: SymlinkPolicy = "refuse"
    max_voxels: int | None = None

    @classmethod
    def for_site(cls, site: "SiteConfig", task: str) -> "CheckPolicy":
        """The policy a site's YAML sets for ``task``."""
        data = site.datasets.get(task)
        return cls(training_only=site.training_only, symlinks_outside_root=site.symlinks_outside_root,
                   max_voxels=data.max_voxels if data is not None else None)
