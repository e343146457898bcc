"""The options every DNS module of the project shares (its resolver)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  nameservers:
    description:
      - Nameservers to ask, each C(IP), C(IP:port) or C([IPv6]:port). Empty = the system's
        nameservers (search domains are never used).
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds allowed for each DNS query.
    type: float
    default: 5
requirements:
  - bulkrelay (sender/ of this repository) on the controller
"""
