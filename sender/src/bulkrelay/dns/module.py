"""What the read-only DNS modules in library/ share: build the resolver from their
`nameservers`/`timeout` options, run one check, and turn its CheckResult into the module's
result (warnings passed on, never changed, a failure that names the fix).

``module`` is the AnsibleModule; it is only called, so this file needs no Ansible import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bulkrelay.dns.resolver import NameserverError, make_resolver
from bulkrelay.dns.result import CheckResult


def run_check(
    module: Any,
    name: str,
    check: Callable[[Any, Mapping[str, Any]], CheckResult],
    details: Mapping[str, Any],
    errors: tuple[type[Exception], ...] = (),
) -> None:
    """Run ``check(resolver, params)`` and exit the module; ``details`` maps the result fields
    copied from ``CheckResult.details`` to their defaults."""
    params = module.params
    try:
        result = check(make_resolver(params["nameservers"], params["timeout"]), params)
    except (NameserverError, ValueError, *errors) as exc:
        module.fail_json(msg=f"{name}: {exc}")
    for warning in result.warnings:
        module.warn(warning)
    out = {
        "changed": False,
        "status": result.status,
        "message": result.message,
        "fix": result.fix,
        **{field: result.details.get(field, default) for field, default in details.items()},
        "check": result.as_dict(),
    }
    if result.failed:
        module.fail_json(msg=result.summary(), **out)
    module.exit_json(**out)
