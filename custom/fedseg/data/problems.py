"""Problems found in a site's data, collected so that all of them are reported at once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fedseg.errors import DataError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file: ``kind`` is a stable short code, ``message`` says what to fix."""

    kind: str
    file: str
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        level = "ERROR" if self.fatal else "WARNING"
        return f"{level} [{self.kind}] {self.file}: {self.message}"


@dataclass
class ProblemReport:
    """All problems found by a check, fatal and not."""

    problems: list[Problem] = field(default_factory=list)
    cases_checked: int = 0

    def add(self, kind: str, file, message: str, *, fatal: bool = True) -> None:
        self.problems.append(Problem(kind, str(file), message, fatal))

    def extend(self, other: "ProblemReport") -> None:
        self.problems.extend(other.problems)
        self.cases_checked += other.cases_checked

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.fatal]

    def kinds(self) -> dict[str, int]:
        """Problem counts by kind: safe to share, it names no file."""
        return dict(sorted(Counter(p.kind for p in self.problems).items()))

    def summary(self) -> str:
        """One line without file names, fit for logs that leave the site."""
        kinds = ", ".join(f"{k} x{n}" for k, n in self.kinds().items()) or "none"
        return (f"{len(self.fatal)} fatal problem(s), {len(self.warnings)} warning(s) "
                f"in {self.cases_checked} case(s): {kinds}")

    def render(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    def raise_if_fatal(self, context: str, before: str = "training") -> None:
        """Raise a :class:`DataError` listing every problem if any is fatal."""
        if self.fatal:
            raise DataError(f"{context}: {len(self.fatal)} problem(s) must be fixed before {before}:\n{self.render()}")
