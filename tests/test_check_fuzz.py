"""Property: the data check never raises and stays in bounded memory, and what it accepts trains.

Hypothesis draws image/label pairs (:mod:`fuzz_volumes`: voxel types, shapes, affines, spacings,
contents, label values, header fields, truncation). For each, the check of the case must return
(never raise) within a memory bound; and when it finds nothing fatal, one training step and one
sliding-window evaluation of the task's tiny variant, through its real transforms, must run and
give a finite loss. The default run is short and seeded; ``-m slow`` runs more examples over the
three volume tasks (seeded too; see ``LONG_EXAMPLES`` for a longer, random campaign).
"""

from __future__ import annotations

import math
import os
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz_volumes import Recipe, recipes, write_case
from fedseg.data.checks import check_case
from fedseg.data.datalist import Case
from fedseg.data.problems import ProblemReport
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.tasks import get_task

CHECK_MEMORY_BOUND = 64 * 2**20  # bytes the check may allocate for one small case, whatever its header says
_FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _checked(task: str, image: Path, label: Path) -> ProblemReport:
    # Untraced first pass: lazy imports and caches the check triggers once per process (up to
    # 64 MiB, measured in CI) are not what the bound is about.
    check_case(Case(image, label, image.name), get_task(task, "tiny"), "training", ProblemReport())
    report = ProblemReport()
    tracemalloc.start()
    try:
        check_case(Case(image, label, image.name), get_task(task, "tiny"), "training", report)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < CHECK_MEMORY_BOUND, f"the check allocated {peak / 2**20:.0f} MiB"
    return report


def _train_and_evaluate(task: str, image: Path, label: Path) -> None:
    spec = get_task(task, "tiny")
    item = {"image": str(image), "label": str(label)}
    engine = SegmentationEngine(spec, Runtime.create("cpu", num_threads=1), seed=0)
    result = engine.train(engine.train_data([item]), iterations=1)
    assert math.isfinite(result.final_loss)
    scores = engine.evaluate(engine.eval_data([item]))
    assert scores.n_cases == 1


def _property(task: str, recipe: Recipe, accepted: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        image, label = write_case(recipe, Path(tmp))
        report = _checked(task, image, label)  # raises only if the check itself raised
        if not report.fatal:
            accepted.append(recipe)
            try:
                _train_and_evaluate(task, image, label)
            except Exception as exc:
                found = report.render() or "no problems"
                raise AssertionError(f"the check accepted a case the transforms cannot train on "
                                     f"({type(exc).__name__}: {exc}); report: {found}") from exc


@pytest.mark.timeout(300)
def test_check_never_raises_and_what_it_accepts_trains():
    accepted: list[Recipe] = []

    @settings(max_examples=40, **_FUZZ)
    @given(recipes())
    def run(recipe):
        _property("spleen", recipe, accepted)

    run()
    assert len(accepted) >= 5, "the generator must also produce volumes the check accepts"


# The slow run in CI: 150 examples per task, derandomized like the default run, so CI gives the same
# answer twice. A longer campaign with fresh examples each time (what finds new gaps):
#   FEDSEG_FUZZ_EXAMPLES=2000 FEDSEG_FUZZ_RANDOM=1 pytest -m slow tests/test_check_fuzz.py
LONG_EXAMPLES = int(os.environ.get("FEDSEG_FUZZ_EXAMPLES", "150"))
LONG_RANDOM = os.environ.get("FEDSEG_FUZZ_RANDOM", "") == "1"


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("task", ["spleen", "liver", "prostate"])
def test_check_fuzz_long(task):
    accepted: list[Recipe] = []

    @settings(max_examples=LONG_EXAMPLES, **{**_FUZZ, "derandomize": not LONG_RANDOM})
    @given(recipes(task))
    def run(recipe):
        _property(task, recipe, accepted)

    run()
    assert accepted
