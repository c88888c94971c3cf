"""A site's data for one task: checked before use, with class names from its ``dataset.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fedseg.data.checks import check_data
from fedseg.data.datalist import Datalist
from fedseg.data.policy import CheckPolicy
from fedseg.data.problems import ProblemReport
from fedseg.site_config import SiteConfig
from fedseg.tasks.spec import TaskSpec

log = logging.getLogger("fedseg")


@dataclass
class SiteData:
    site: SiteConfig
    spec: TaskSpec
    datalist: Datalist
    class_names: tuple[str, ...]
    report: ProblemReport
    _slices: dict = field(default_factory=dict, repr=False)

    def items(self, split: str) -> list[dict]:
        """MONAI data dicts of one split: the volumes, or for an interactive task their 2D samples."""
        if not self.spec.interactive:
            return self.datalist.items(split)
        if split not in self._slices:
            from fedseg.deepgrow.prepare import prepare_slices

            out = self.site.derived_dir(self.spec.name) / f"{self.spec.variant_name}_{split}"
            items = prepare_slices(self.spec, self.datalist.items(split), out, self.class_names).items
            cap = self.spec.interaction.max_val_samples
            if split == "validation" and cap and len(items) > cap:
                items = [items[round(i * len(items) / cap)] for i in range(cap)]
            self._slices[split] = items
        return self._slices[split]


def open_site_data(spec: TaskSpec, site: SiteConfig, *, strict: bool = True) -> SiteData:
    """Check every file the site lists for ``spec`` and refuse to go on if any problem is fatal.

    With ``strict`` the :class:`~fedseg.errors.DataError` raised names each file and problem;
    warnings are logged and do not stop the run.
    """
    task_data = site.task_data(spec.name)
    datalist, info, report = check_data(spec, task_data.data_root, task_data.datalist,
                                        policy=CheckPolicy.for_site(site, spec.name))
    for warning in report.warnings:
        log.warning("site %s: %s", site.site, warning)
    if strict:
        report.raise_if_fatal(f"site {site.site!r}, task {spec.name!r} ({task_data.datalist})")
    fits = info is not None and (spec.interactive or len(info.labels) == spec.num_classes)
    names = info.labels if fits else spec.labels
    return SiteData(site, spec, datalist, tuple(names), report)
