"""Rules over the project's own YAML that linters do not know.

A task with `failed_when: false` always has `.failed` false, so a later check of `.failed`
can never fire (the port-25 check that passed an open relay, issue 14): in a file where any
task sets `failed_when: false`, nothing may read `failed` from a result.
"""

import re
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
FILES = sorted(
    p
    for pattern in ("site.yml", "playbooks/*.yml", "roles/*/tasks/*.yml", "roles/*/handlers/*.yml")
    for p in PROJECT.glob(pattern)
)


def tasks(node):
    """Every task-like mapping in a playbook or task file, blocks and plays included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            yield from tasks(node.get(key))


def reads_failed(text):
    """`.failed`, `['failed']`, or `selectattr('failed'...)`/`rejectattr('failed'...)`."""
    return re.search(r"\.failed\b|\[\s*['\"]failed['\"]\s*\]|attr\(\s*['\"]failed['\"]", text)


def test_rule_finds_the_bug_it_guards_against():
    bad = yaml.safe_load(
        "- {name: probe, command: 'true', register: r, failed_when: false}\n"
        '- {name: judge, set_fact: {x: "{{ r.failed }}"}}\n'
    )
    assert any(t.get("failed_when") is False for t in tasks(bad))
    assert reads_failed(yaml.safe_dump(bad))
    assert not reads_failed("{{ r.rc }} {{ r.failed_when_result }}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_no_failed_when_false_then_read_failed(path):
    text = path.read_text()
    data = yaml.safe_load(text)
    silenced = [t.get("name", "?") for t in tasks(data) if t.get("failed_when") in (False, "false", "False")]
    if silenced:
        hit = reads_failed(text)
        assert not hit, (
            f"{path.name}: tasks {silenced} use failed_when: false, and the file reads "
            f"{hit.group(0)!r}: that is always false. Judge rc, state or elapsed instead."
        )
