"""Live-DNS checks and record generation for a bulk-mail relay.

Every check asks DNS through :mod:`bulkrelay.dns.resolver` (absolute names, explicit
nameservers, no search domains, "could not tell" kept apart from "absent") and returns a
:class:`bulkrelay.dns.result.CheckResult`. The Ansible modules in ``library/`` are thin shells
over these functions.
"""
