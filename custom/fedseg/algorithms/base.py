"""What an FL algorithm declares: its server controller, its site-side round, what it supports.

An :class:`Algorithm` is a plug-in: the job generator asks it for the NVFlare controller and the
transfer type, and checks a job against what it supports; the site client asks it for a
:class:`SiteAlgorithm`, which runs each training round through the site's trainer (local or Ray)
with the algorithm's :class:`fedseg.engine.hooks.RoundHooks`. Hyper-parameters are declared as
:class:`Option` values, so the command line, the job and the checks share one list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from fedseg.engine.hooks import RoundHooks

if TYPE_CHECKING:
    from fedseg.engine import TrainResult

PRIVACY = ("none", "exclude", "percentile")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Option:
    """One hyper-parameter of an algorithm, with the range it may take (both ends allowed)."""

    name: str
    default: float
    low: float
    high: float
    help: str
    integer: bool = False

    def check(self, value: Any, algorithm: str) -> float | int:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high
        if ok and self.integer and float(value) != int(value):
            ok = False
        if not ok:
            kind = "a whole number" if self.integer else "a number"
            raise ValueError(f"{algorithm} option {self.name!r} must be {kind} from {self.low:g} to {self.high:g} "
                             f"({self.help}), got {value!r}")
        return int(value) if self.integer else float(value)


@dataclass
class RoundOutput:
    """What a site sends after a training round: the update, extra meta and extra (finite) metrics."""

    result: "TrainResult"
    meta: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


class SiteAlgorithm:
    """An algorithm's side at one site, kept by the client from round to round.

    The default is FedAvg's: train the received model for the round's epochs, send the weights.
    """

    def __init__(self, options: Mapping[str, float]):
        self.options = dict(options)

    def hooks(self, params: Mapping, meta: Mapping) -> RoundHooks | None:
        """The hooks for this round's training (``params``, ``meta``: what the server sent)."""
        return None

    def train_round(self, trainer, params: Mapping, meta: Mapping, *, epochs: int,
                    progress: tuple[float, float] | None) -> RoundOutput:
        return RoundOutput(trainer.train(params, epochs, progress=progress, hooks=self.hooks(params, meta)))

    def model_to_submit(self, last_weights: Mapping) -> Mapping:
        """The weights cross-site evaluation scores as this site's model (its last local model)."""
        return last_weights

    def models_to_keep(self) -> dict[str, Mapping]:
        """Models the site saves in its workspace after each round besides its local one, by name."""
        return {}


class Algorithm:
    """An FL algorithm: subclass, set the class attributes, override what differs from FedAvg."""

    name: str = ""
    summary: str = ""
    options: tuple[Option, ...] = ()
    backends: tuple[str, ...] = BACKENDS  # site backends whose trainers run its rounds
    privacy: tuple[str, ...] = PRIVACY  # privacy filters it works with
    resume_note: str | None = None  # what a resumed job (fedseg ... --resume) starts afresh, if anything
    site_class: type[SiteAlgorithm] = SiteAlgorithm

    # Options ----------------------------------------------------------------------------------------
    def values(self, given: Mapping[str, Any] | None = None) -> dict[str, float | int]:
        """Every option's value: its default unless ``given``; unknown names and bad values refused."""
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise ValueError(f"{self.name} has no option {', '.join(map(repr, unknown))} (its options: {allowed})")
        return {name: o.check(given.get(name, o.default), self.name) for name, o in known.items()}

    # Server side ------------------------------------------------------------------------------------
    def check(self, job) -> None:
        """Refuse a job this algorithm cannot run (raise ``ValueError`` saying why)."""
        self.values(dict(job.algorithm_options))
        if job.privacy not in self.privacy:
            raise ValueError(f"privacy {job.privacy!r} does not work with {self.name}: it supports "
                             f"{', '.join(self.privacy)}")

    def update_problems(self, meta: Mapping, reference) -> list[str]:
        """Why a site's update must not be averaged, from what this algorithm adds to its meta
        (``reference``: the global model's :class:`fedseg.flare.guard.Reference`, or None). The
        server's update guard calls it after its own checks; FedAvg adds nothing."""
        return []

    def transfer_type(self, job) -> str:
        """``FULL`` weights, or ``DIFF`` (weight differences: the Client API computes them)."""
        return "DIFF" if job.privacy == "percentile" else "FULL"

    def controller(self, job, **common):
        """The server's workflow controller for ``job``; ``common`` holds the recipe's arguments."""
        from fedseg.flare.controller import ConsortiumFedAvg

        return ConsortiumFedAvg(**common)

    def client_args(self, job) -> str:
        """Arguments the site client needs to run this algorithm's side (empty for FedAvg)."""
        site_options = self.site_options(job)
        if self.site_class is SiteAlgorithm and not site_options:
            return ""  # the sites train as in FedAvg

        args = f" --algorithm {self.name}"
        for name, value in site_options.items():
            args += f" --algorithm-option {name}={value:g}"
        return args

    def site_options(self, job) -> dict[str, float | int]:
        """The options the sites read (the rest only the server uses)."""
        return {}

    # Site side --------------------------------------------------------------------------------------
    def site(self, options: Mapping[str, Any] | None = None) -> SiteAlgorithm:
        return self.site_class(self.values(options))
