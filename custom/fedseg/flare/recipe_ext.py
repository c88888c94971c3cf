"""The one place fedseg reaches past NVFlare 2.9's public recipe API, and why.

NVFlare's ``Recipe`` offers filters, configs, files and meta publicly, but no way to add a
component, set the exported app packages or choose the cross-site controller; NVFlare's own
helpers (``add_experiment_tracking``, ``add_cross_site_evaluation``) use the recipe's private
``_job`` (a ``FedJob``) for that. fedseg does the same, here only:

* ``_job.to_server`` / ``_job.to_clients``: the site heartbeats and the liveness monitor, and the
  cross-site evaluation pieces (model locator, result writer, fedseg's bounded controller);
* ``_job.comp_ids["persistor_id"]``: which persistor the cross-site model locator reads, as
  NVFlare's ``add_cross_site_evaluation`` finds it;
* ``_job.set_app_packages``: fedseg is installed where the job runs, so its sources are not copied
  into ``app/custom`` (a thin, non-BYOC job);
* ``_always_serialize_args`` on ``ConsortiumFedOpt`` (a class attribute NVFlare's job exporter reads,
  ``job_config/fed_job_config.py``): the server optimizer's arguments are written into the job
  even when they equal NVFlare's defaults, so the job says which optimizer runs.

If NVFlare renames any of these, :func:`fed_job` fails with a message saying so.
"""

from __future__ import annotations

from fedseg.errors import FedsegError


def fed_job(recipe):
    """The recipe's ``FedJob``."""
    from nvflare.job_config.api import FedJob

    job = getattr(recipe, "_job", None)
    if not isinstance(job, FedJob):
        raise FedsegError("this NVFlare's Recipe keeps no FedJob in Recipe._job; fedseg.flare.recipe_ext needs "
                          "updating for it (fedseg is tested with nvflare 2.9)")
    return job


def add_server_component(recipe, component, component_id: str | None = None) -> str:
    return fed_job(recipe).to_server(component, id=component_id)


def add_client_component(recipe, component, component_id: str | None = None) -> None:
    fed_job(recipe).to_clients(component, id=component_id)


def installed_packages(recipe, packages: list[str]) -> None:
    """Export no source files of components from ``packages``: the sites have them installed."""
    fed_job(recipe).set_app_packages(packages)


def add_cross_site_evaluation(recipe, controller) -> None:
    """NVFlare's PyTorch cross-site evaluation (what ``nvflare.recipe.add_cross_site_evaluation`` adds)
    with ``controller`` (a ``CrossSiteModelEval``) as its workflow.

    ``controller`` is built by the caller with ``model_locator_id=LOCATOR_ID``.
    """
    from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator
    from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator

    job = fed_job(recipe)
    persistor_id = getattr(job, "comp_ids", {}).get("persistor_id")
    if not persistor_id:
        raise FedsegError("the recipe made no model persistor; cross-site evaluation reads the models through it")
    job.to_server(PTFileModelLocator(pt_persistor_id=persistor_id), id=LOCATOR_ID)
    job.to_server(ValidationJsonGenerator())
    job.to_server(controller)


LOCATOR_ID = "model_locator"
