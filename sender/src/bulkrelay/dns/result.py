"""The result every DNS check returns, shaped for Ansible modules, JSON and JUnit reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS = "pass"  # noqa: S105 - a check status, not a password
WARN = "warn"
FAIL = "fail"
ERROR = "error"  # could not tell (DNS timeout/SERVFAIL): never reported as pass or absent


@dataclass
class CheckResult:
    """Outcome of one check.

    ``status``: pass | warn | fail | error. ``message`` says what was found; ``fix`` says which
    record to set to what (empty when nothing to do). ``details`` holds check-specific facts.
    """

    check: str
    subject: str
    status: str
    message: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in (FAIL, ERROR)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: what failed and the fix, for an Ansible failure message."""
        text = f"{self.check} {self.subject}: {self.status.upper()}: {self.message}"
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


@dataclass
class Outcome:
    """The result a check is building: what it checks, the details and warnings found so far,
    and the fix it suggests. Each verdict returns the finished CheckResult."""

    check: str
    subject: str
    details: dict[str, Any]
    fix: str = ""
    warnings: list[str] = field(default_factory=list)

    def _result(self, status: str, message: str, fix: str = "") -> CheckResult:
        return CheckResult(self.check, self.subject, status, message, fix, self.details, self.warnings)

    def passed(self, message: str) -> CheckResult:
        """Pass, or warn when a warning was found on the way."""
        return self._result(WARN if self.warnings else PASS, message)

    def fail(self, message: str, fix: str | None = None) -> CheckResult:
        """Fail with ``fix`` (default: the check's own fix)."""
        return self._result(FAIL, message, self.fix if fix is None else fix)

    def error(self, message: str) -> CheckResult:
        """Could not tell (DNS timeout, SERVFAIL, ...)."""
        return self._result(ERROR, message)
