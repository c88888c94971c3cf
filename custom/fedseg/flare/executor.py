"""The site runs the fedseg it installed: a job brings wiring, never code.

NVFlare's recipes ship the training script in the job's ``app/custom/``, which makes every job
"bring your own code" (BYOC): a site must then grant job submitters the right to run arbitrary
code on its machines. fedseg's thin jobs instead name :class:`InstalledClientExecutor`, NVFlare's
in-process Client API executor pointed at the client loop of the fedseg installed in the site's
own Python (:mod:`fedseg.flare.client`), found at the site when the job starts. The job folder
holds configuration only, so NVFlare's job validator marks it ``byoc: False``.
"""

from __future__ import annotations

import logging

import nvflare
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
from nvflare.client.config import ExchangeFormat, TransferType


def installed_client_script() -> str:
    """The path of fedseg's client loop in this site's installation."""
    import fedseg.flare.client

    return fedseg.flare.client.__file__


# How often the in-process executor and the trainer look for each other's message. NVFlare 2.9
# polls every 0.5 s on both sides and exposes no setting ("the frozen surface deliberately drops
# the knob"), so each site lost about 0.5 s per round to the two waits (bench/README.md, "FL
# overhead"). Sleeping 20 ms between looks costs nothing measurable.
RESULT_POLL_INTERVAL_S = 0.02


def shorten_result_polling(interval: float = RESULT_POLL_INTERVAL_S) -> bool:
    """Set the in-process Client API's poll interval; False when this NVFlare has no such constant."""
    from nvflare.app_common.executors.client_api import in_process_backend

    if not isinstance(getattr(in_process_backend, "_RESULT_POLL_INTERVAL", None), (int, float)):
        logging.getLogger("fedseg").warning(
            "this NVFlare (%s) has no in_process_backend._RESULT_POLL_INTERVAL: its own poll interval stays, "
            "each round waits for it", nvflare.__version__)
        return False
    in_process_backend._RESULT_POLL_INTERVAL = interval
    return True


class InstalledClientExecutor(ClientAPIExecutor):
    """NVFlare's in-process ``ClientAPIExecutor`` running the installed :mod:`fedseg.flare.client`."""

    def __init__(self, task_script_args: str = "", params_transfer_type: str = TransferType.FULL):
        shorten_result_polling()  # before the backend builds its Client API, which reads the interval
        super().__init__(execution_mode="in_process", task_script_path=None, task_script_args=task_script_args,
                         params_exchange_format=ExchangeFormat.PYTORCH, params_transfer_type=params_transfer_type)

    def _build_backend_context(self):
        # Resolved here, at the site, when the job starts: the path is the site's own, never the job's.
        self._task_script_path = installed_client_script()
        return super()._build_backend_context()


class InstalledClientRunner:
    """Recipe-side stand-in for NVFlare's ``ScriptRunner`` that adds the executor and no script file."""

    def __init__(self, task_script_args: str, params_transfer_type: str):
        self.task_script_args, self.params_transfer_type = task_script_args, params_transfer_type

    def add_to_fed_job(self, job, ctx, **kwargs):
        job.add_executor(InstalledClientExecutor(self.task_script_args, self.params_transfer_type),
                         tasks=kwargs.get("tasks", ["*"]), ctx=ctx)
        return {}
