"""A site's data for one task: checked before use, with class names from its ``dataset.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedseg.data.checks import check_data
from fedseg.data.datalist import Datalist
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

    def items(self, split: str) -> list[dict]:
        return self.datalist.items(split)


def open_site_data(spec: TaskSpec, site: SiteConfig, *, strict: bool = True) -> SiteData:
    """Check every file the site lists for ``spec`` and refuse to go on if any problem is fatal.

    With ``strict`` the :class:`~fedseg.errors.DataError` raised names each file and problem;
    warnings are logged and do not stop the run.
    """
    task_data = site.task_data(spec.name)
    datalist, info, report = check_data(spec, task_data.data_root, task_data.datalist)
    for warning in report.warnings:
        log.warning("site %s: %s", site.site, warning)
    if strict:
        report.raise_if_fatal(f"site {site.site!r}, task {spec.name!r} ({task_data.datalist})")
    names = info.labels if info is not None and len(info.labels) == spec.num_classes else spec.labels
    return SiteData(site, spec, datalist, tuple(names), report)
