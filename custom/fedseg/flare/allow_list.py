"""The component classes a site allows, instead of letting jobs bring their own code.

NVFlare 2.9 builds a job's components only from classes on the site's ``class_allow_list``
(``local/resources.json``; NVFlare's built-in default list when none is set) unless the job
brings its own code (BYOC), in which case anything goes. fedseg's thin jobs bring no code, so a
site (and the server) allows the few classes they name: fedseg's, plus NVFlare and torch classes
missing from NVFlare's default list. :func:`required_classes` reads them off the job folders, so
the list is exactly what the jobs use; ``fedseg jobs allow-list`` prints it for a site's admin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

RESOURCES = "resources.json"
ALLOW_LIST_KEY = "class_allow_list"


def _component_paths(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get("path"), str):
            found.add(node["path"])
        for value in node.values():
            found |= _component_paths(value)
    elif isinstance(node, list):
        for value in node:
            found |= _component_paths(value)
    return found


def default_allow_list() -> list[str]:
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    return list(DEFAULT_CLASS_ALLOW_LIST)


def required_classes(job_dirs: Iterable[Path]) -> list[str]:
    """Classes the jobs' configs name that NVFlare's default allow list does not cover."""
    from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

    authorizer = ComponentPathAuthorizer()
    allowed = authorizer._normalize_allow_list(default_allow_list())  # NVFlare's own prefix rules
    paths = set()
    for job_dir in job_dirs:
        for config in Path(job_dir).glob("app*/config/config_fed_*.json"):
            paths |= _component_paths(json.loads(config.read_text()))
    return sorted(p for p in paths if not any(authorizer._path_matches_prefix(p, a) for a in allowed))


def committed_job_classes() -> list[str]:
    """What a site allows to run every job ``fedseg jobs export`` writes by default (all algorithms)."""
    import tempfile

    from fedseg.flare.jobs import COMMITTED, export_all

    with tempfile.TemporaryDirectory() as tmp:
        return required_classes(export_all(Path(tmp), COMMITTED))


def allow_classes(local_dir: Path, classes: Iterable[str]) -> Path:
    """Add ``classes`` to ``local_dir/resources.json``'s allow list.

    Without a ``resources.json`` the site's ``resources.json.default`` (a startup kit's) or an empty
    file is the starting point, and the allow list starts as NVFlare's default one.
    """
    path = Path(local_dir) / RESOURCES
    base = path if path.is_file() else path.with_name(RESOURCES + ".default")
    resources = json.loads(base.read_text()) if base.is_file() else {"format_version": 2}
    current = resources.get(ALLOW_LIST_KEY) or default_allow_list()
    resources[ALLOW_LIST_KEY] = current + [c for c in classes if c not in current]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(resources, indent=2))
    return path
