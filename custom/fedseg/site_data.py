"""A site's data for one task: checked before use, with class names from its ``dataset.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fedseg.data.checks import check_data
from fedseg.data.datalist import Datalist
from fedseg.data.policy import CheckPolicy
from fedseg.data.problems import ProblemReport
from fedseg.site_config import SiteConfig
from fedseg.tasks.kinds import task_kind
from fedseg.tasks.spec import TaskSpec

log = logging.getLogger("fedseg")


@dataclass
class SiteData:
    site: SiteConfig
    spec: TaskSpec
    datalist: Datalist
    class_names: tuple[str, ...]
    report: ProblemReport
    _items: dict = field(default_factory=dict, repr=False)

    def items(self, split: str) -> list[dict]:
        """MONAI data dicts of one split as the task's kind trains on them (volumes, or 2D samples), made once."""
        if split not in self._items:
            self._items[split] = task_kind(self.spec).items(self, split)
        return self._items[split]


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
    fits = info is not None and (not spec.fixed_classes or len(info.labels) == spec.num_classes)
    names = info.labels if fits else spec.labels
    return SiteData(site, spec, datalist, tuple(names), report)
