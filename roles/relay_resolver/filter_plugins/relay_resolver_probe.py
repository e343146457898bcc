"""The relay_resolver role's probe judge: the rule lives in bulkrelay.tlspolicy (shared with the
audit's dane check), installed in the controller's venv."""

from __future__ import annotations

from typing import Any

from bulkrelay import tlspolicy


def relay_resolver_probe_problem(result: dict[str, Any], bogus_name: str) -> str:
    """ "" when one looped dig result (its item is the name asked) shows unbound validating as
    wanted (the bogus name must fail), else the reason."""
    name = str(result.get("item", "?"))
    verdict, why = tlspolicy.judge_dig(
        int(result.get("rc", -1)), str(result.get("stdout", "")), name, bogus=name == bogus_name
    )
    return "" if verdict == tlspolicy.VALIDATED else f"{verdict}: {why}"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"relay_resolver_probe_problem": relay_resolver_probe_problem}
