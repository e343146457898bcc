#!/usr/bin/python
# managed in the bulkrelay repository.
"""Ansible module: write several files with the same owner, group and mode in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_files
short_description: Write several files (content given) with one owner, group and mode, in one run
description:
  - One task instead of a template task per file (each costs two module runs on the host even
    when nothing changes), for the sets of small files a role renders together, such as
    Postfix's lookup tables, and for a single file a role writes without a C(validate) (one
    module run where a template or copy task costs two). Render each file's content with
    C(lookup('template', ...)).
  - A file is written (through a temporary file renamed over it) only when its content, owner,
    group or mode differs; RV(files_changed) names those, and C(--diff) shows one diff per file.
    Check mode writes nothing.
version_added: "0.1.0"
author: bulkrelay
options:
  files:
    description: The files, each C(dest) (absolute path; its folder must exist) and C(content).
    type: list
    elements: dict
    required: true
  owner: {description: Owner of every file., type: str, default: root}
  group: {description: Group of every file., type: str, default: root}
  mode: {description: Mode of every file (octal string)., type: str, default: "0644"}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Write the Postfix lookup tables
  bulkrelay_files:
    files:
      - dest: /etc/postfix/transport
        content: "{{ lookup('template', 'etc/postfix/transport.j2') }}"
      - dest: /etc/postfix/virtual
        content: "{{ lookup('template', 'etc/postfix/virtual.j2') }}"
  notify: relay_postfix reload
"""

RETURN = r"""
files_changed:
  description: The paths written (in check mode, that would be written).
  type: list
  elements: str
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.bulkrelay_files import write_files


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "dest": {"type": "path", "required": True},
                    "content": {"type": "str", "required": True},
                },
            },
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        mode = int(p["mode"], 8)
    except ValueError:
        module.fail_json(msg=f'bulkrelay_files: mode {p["mode"]!r} is not octal: write it like "0644"')
    files = {f["dest"]: f["content"] for f in p["files"]}
    try:
        changed, diffs = write_files(module, files, mode, p["owner"], p["group"])
    except (KeyError, OSError) as exc:  # an unknown owner or group, a missing folder
        module.fail_json(msg=f"bulkrelay_files: {exc}")
    module.exit_json(changed=bool(changed), files_changed=changed, diff=diffs)


if __name__ == "__main__":
    main()
