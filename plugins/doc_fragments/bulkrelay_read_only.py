"""The attributes of every bulkrelay module: none changes anything, so check mode runs the same."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""
