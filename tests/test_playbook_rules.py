"""Rules over the project's own YAML that linters do not know.

A task with `failed_when: false` always has `.failed` false, so a later check of `.failed`
can never fire (the port-25 check that passed an open relay, issue 14): in a file where any
task sets `failed_when: false`, nothing may read `failed` from a result.

A secret (an option marked no_log in meta/argument_specs.yml) never reaches a command line,
a task result (no_log) or a `--check --diff` (diff: false on the template that renders it).
"""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from ansible.playbook.task import Task

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


# --- secrets never reach the output (`--check --diff`, -v results) or a command line ---------

SECRET_NAME = re.compile(r"password|secret|dqs_key|tsig|private_key")  # a default with this name is a secret
NOT_A_VALUE = re.compile(r"_(file|dir|path)$")  # where a secret is kept, not the secret
# Module parameters the module itself declares no_log (checked below against its source).
MODULE_HIDES = {"community.general.nsupdate": {"key_secret"}}
COMMAND_MODULES = {"command", "shell", "raw"}
TASK_KEYWORDS = set(Task.fattributes) | {"block", "rescue", "always", "listen"}


class Secrets:
    """What holds a secret, from meta/argument_specs.yml (options marked no_log): variables, and
    lists whose items hold one in an attribute (SASL users' password, DKIM keys' private_key)."""

    def __init__(self, values, lists, attributes):
        self.lists = re.compile(rf"\b({'|'.join(lists) or '(?!)'})\b")
        attribute = "|".join(attributes) or "(?!)"
        self.value = re.compile(
            rf"\b({'|'.join(values) or '(?!)'})\b|\.({attribute})\b|\[\s*'({attribute})'\s*\]"
            rf"|attribute\s*=\s*'({attribute})'"
        )

    @classmethod
    def from_specs(cls):
        values, lists, attributes = set(), set(), set()
        for spec in PROJECT.glob("roles/*/meta/argument_specs.yml"):
            for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
                for name, option in entry.get("options", {}).items():
                    if option.get("no_log"):
                        values.add(name)
                    hidden = [sub for sub, o in (option.get("options") or {}).items() if o.get("no_log")]
                    if hidden:
                        lists.add(name)
                        attributes.update(hidden)
        return cls(values, lists, attributes)

    def shown(self, text):
        """Does Jinja in ``text`` output a secret (names in plain prose do not count)?"""
        return any(self.value.search(j) for j in re.findall(r"{{.*?}}|{%.*?%}", text, re.S))

    def looped(self, text):
        """Does a loop walk a list whose items hold secrets (each item is printed)?"""
        return bool(self.lists.search(text))


def module_of(task):
    return next((k for k in task if k not in TASK_KEYWORDS and not k.startswith("with_")), None)


def leaks(task, path, secrets):
    """What is wrong with how this task handles a secret ('' when nothing)."""
    module = module_of(task)
    if module is None:
        return ""
    args = task[module] if isinstance(task[module], dict) else {"_raw_params": task[module]}
    command_line = {k: v for k, v in args.items() if k in ("argv", "cmd", "_raw_params")}
    if module.rsplit(".", 1)[-1] in COMMAND_MODULES and secrets.shown(yaml.safe_dump(command_line)):
        return "a secret on the command line, which `ps` shows to every user: pass it on stdin"
    if module.endswith("template") and task.get("diff") not in (False, "false"):  # no_log hides no diff
        template = path.parent.parent / "templates" / str(args.get("src", ""))
        if template.is_file() and secrets.shown(template.read_text()):
            return f"it renders a secret ({template.name}), which --diff prints: set diff: false"
    if task.get("no_log") in (True, "true"):
        return ""
    args = {k: v for k, v in args.items() if k not in MODULE_HIDES.get(module, ())}
    if module.endswith("assert"):  # prints its conditions as written, never their values
        args.pop("that", None)
    loops = yaml.safe_dump([task.get("loop"), {k: v for k, v in task.items() if k.startswith("with_")}])
    if secrets.shown(yaml.safe_dump(args) + loops) or secrets.looped(loops):
        return "its arguments or loop items carry a secret: set no_log: true"
    return ""


def test_every_secret_default_is_marked_no_log():
    """The rule knows secrets from argument_specs: a secret default missing there would escape it."""
    specs = Secrets.from_specs()
    defaults = {
        name
        for path in PROJECT.glob("roles/*/defaults/main.yml")
        for name in yaml.safe_load(path.read_text()) or {}
        if SECRET_NAME.search(name) and not NOT_A_VALUE.search(name)
    }
    missing = {name for name in defaults if not specs.shown(f"{{{{ {name} }}}}")}
    assert not missing, f"mark these no_log: true in meta/argument_specs.yml: {sorted(missing)}"
    for known in ("dnsbl_monitor__dqs_key", "bounce_poller__imap_password", "dns_records__apply_key_secret"):
        assert specs.shown(f"{{{{ {known} }}}}")
    assert specs.shown("{{ item.password }}") and specs.shown("{{ item.private_key }}")
    assert specs.looped("{{ relay_postfix__sasl_users }}") and specs.looped("{{ relay_dkim__supplied_keys }}")
    assert specs.shown("{{ hook.secret }}") and specs.looped("{{ relay_sender__webhooks }}")


def test_modules_hide_the_parameters_we_rely_on():
    for module, params in MODULE_HIDES.items():
        namespace, collection, name = module.split(".")
        path = f"ansible_collections.{namespace}.{collection}.plugins.modules.{name}"
        source = Path(importlib.util.find_spec(path).origin).read_text()
        for param in params:
            assert re.search(rf"{param}=dict\([^)]*no_log=True", source), f"{module} shows {param}"


def test_secret_rule_finds_the_leaks_it_guards_against(tmp_path):
    bad = yaml.safe_load(
        "- {name: a, command: {argv: [pw, -p, '{{ item.password }}']}, loop: '{{ users }}', no_log: true}\n"
        "- {name: b, copy: {content: '{{ tsig }}', dest: /etc/s}}\n"
        "- {name: c, debug: {msg: x}, loop: '{{ users }}'}\n"
        "- {name: d, template: {src: s.j2, dest: /etc/s}}\n"
        "- {name: e, template: {src: s.j2, dest: /etc/s}, diff: false}\n"
        "- {name: f, community.general.nsupdate: {key_secret: '{{ tsig }}'}}\n"
        "- {name: g, assert: {that: [tsig | length > 0], fail_msg: set tsig}}\n"
        "- {name: h, set_fact: {n: '{{ users | map(attribute=\"name\") }}'}}\n"
        "- {name: i, template: {src: s.j2, dest: /etc/s}, no_log: true}\n"
    )
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "s.j2").write_text("key={{ tsig }}\n")
    secrets = Secrets({"tsig"}, {"users"}, {"password"})
    found = [leaks(task, tmp_path / "tasks" / "main.yml", secrets) for task in bad]
    assert "command line" in found[0] and "no_log" in found[1] and "no_log" in found[2]
    assert "diff: false" in found[3] and "diff: false" in found[8]
    assert found[4:8] == ["", "", "", ""]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_secrets_stay_out_of_diffs_results_and_command_lines(path):
    secrets = Secrets.from_specs()
    problems = [
        f"{task.get('name')}: {why}"
        for task in tasks(yaml.safe_load(path.read_text()))
        if "hosts" not in task and (why := leaks(task, path, secrets))
    ]
    assert not problems, f"{path.name}: " + "; ".join(problems)
