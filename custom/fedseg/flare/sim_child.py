"""``python -m fedseg.flare.sim_child RUN.json``: one job through NVFlare's ``recipe.execute(SimEnv(...))``.

Run in a process of its own by :func:`fedseg.flare.simulate.run_sim_env`, which bounds it:
``SimEnv`` starts the simulator with an unbounded wait, and ``recipe.execute`` reads this
process's ``sys.argv`` (``--export``), so neither may happen in the ``fedseg`` command's process.
RUN.json holds the job (``JobSpec`` fields), the sites, the workspace root and, optionally, a
client script and a starting model (absolute paths).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from nvflare.recipe import SimEnv

    from fedseg.flare.jobs import JobSpec, staged_recipe
    from fedseg.procs import exit_with_parent

    exit_with_parent()  # a killed fedseg process must not leave the simulator training

    run = json.loads(Path(argv[0]).read_text())
    job = JobSpec(**run["job"])
    script = Path(run["client_script"]) if run.get("client_script") else None
    initial = Path(run["initial_weights"]) if run.get("initial_weights") else None
    env = SimEnv(clients=run["clients"], num_threads=len(run["clients"]), workspace_root=run["workspace_root"])
    with staged_recipe(job, script, initial) as recipe:
        recipe.execute(env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
