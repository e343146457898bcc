"""What the bulkrelay modules share: the bulkrelay package (sender/) must be importable where a
module runs, and the read-only DNS checks turn one bulkrelay.dns check into a module result the
same way (warnings passed on, never changed, a failure that names the fix).

A module wraps its bulkrelay imports in ``with bulkrelay_imports():`` and builds its
AnsibleModule with ``bulkrelay_module()``, which fails the task with the install hint when the
package is missing (instead of a traceback at import).
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

_IMPORT_ERRORS: list[str] = []


@contextmanager
def bulkrelay_imports():
    """Run the imports of bulkrelay; an ImportError is kept for bulkrelay_module() to report."""
    try:
        yield
    except ImportError:
        _IMPORT_ERRORS.append(traceback.format_exc())


with bulkrelay_imports():
    from bulkrelay.dns.resolver import make_resolver

# The options of every DNS check, documented once in the doc fragment bulkrelay_dns_check.
DNS_OPTIONS = {
    "nameservers": {"type": "list", "elements": "str", "default": []},
    "timeout": {"type": "float", "default": 5.0},
}


def bulkrelay_module(argument_spec: dict, **kwargs) -> AnsibleModule:
    """The AnsibleModule (check mode supported: the modules change nothing themselves), or a
    failed task when bulkrelay could not be imported."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **kwargs)
    if _IMPORT_ERRORS:
        module.fail_json(
            msg=missing_required_lib("bulkrelay (pip install -e sender/)"), exception=_IMPORT_ERRORS[0]
        )
    return module


def dns_resolver(module: AnsibleModule):
    """The bulkrelay resolver of the module's ``nameservers``/``timeout``; a bad nameserver
    fails the task with a one-line message."""
    try:
        return make_resolver(module.params["nameservers"], module.params["timeout"])
    except ValueError as exc:  # NameserverError is one
        module.fail_json(msg=f"{module._name}: {exc}")


def run_dns_check(options: dict, check, details: dict, errors: tuple = ()) -> None:
    """Run the module whose own options are ``options`` (plus DNS_OPTIONS): call
    ``check(resolver, params)`` (a bulkrelay.dns check returning a CheckResult) and exit with
    its result; ``details`` maps the result fields copied from ``CheckResult.details`` to their
    defaults. ``errors`` are further exceptions that mean "could not check"."""
    module = bulkrelay_module({**options, **DNS_OPTIONS})
    resolver = dns_resolver(module)
    try:
        result = check(resolver, module.params)
    except (ValueError, *errors) as exc:
        module.fail_json(msg=f"{module._name}: {exc}")
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
