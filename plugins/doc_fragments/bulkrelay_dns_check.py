"""The options and attributes every read-only DNS check module in library/ shares."""


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
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
requirements:
  - bulkrelay (sender/ of this repository) on the controller
"""
