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
