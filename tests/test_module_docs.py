"""Every Ansible module of the project documents exactly the options its code accepts: the
DOCUMENTATION (with its shared fragments, as ansible-doc renders it) against the module's
argument_spec, key by key, with type and default."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import ansible.module_utils
import pytest
from ansible.module_utils.basic import AnsibleModule

ROOT = Path(__file__).resolve().parents[1]
MODULE_UTILS = ROOT / "plugins" / "module_utils"
MODULES = sorted([*ROOT.glob("library/*.py"), *ROOT.glob("roles/*/library/*.py")])


class _Spec(Exception):
    """Raised by the patched AnsibleModule to hand back the argument_spec it was given."""


def argument_spec(path: Path, monkeypatch) -> dict:
    """The argument_spec the module's main() hands to AnsibleModule (directly or through
    plugins/module_utils), caught before the module reads any arguments."""

    def capture(self, argument_spec, **kwargs):
        raise _Spec(argument_spec)

    monkeypatch.setattr(ansible.module_utils, "__path__", [*ansible.module_utils.__path__, str(MODULE_UTILS)])
    monkeypatch.setattr(AnsibleModule, "__init__", capture)
    spec = importlib.util.spec_from_file_location(f"_module_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Spec) as caught:
        module.main()
    return caught.value.args[0]


def ansible_doc(*options: str) -> subprocess.CompletedProcess:
    """ansible-doc of every module (one call: it takes a second or two to start)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    dirs = sorted({str(p.parent) for p in MODULES})
    return subprocess.run(
        ["ansible-doc", "-t", "module", *options, *(f"-M{d}" for d in dirs), *(p.stem for p in MODULES)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    """ansible-doc's JSON view of every module."""
    proc = ansible_doc("--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_page_renders_as_text():
    """The page a user reads: a description line that YAML takes for a mapping (': ' in a plain
    scalar) still passes the JSON view but makes the text view fail."""
    proc = ansible_doc()
    assert proc.returncode == 0 and "[ERROR]" not in proc.stderr, proc.stderr
    assert [p for p in MODULES if f"({p})" not in proc.stdout] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_documented_options_are_the_accepted_ones(rendered, path, monkeypatch):
    entry = rendered[path.stem]
    doc = entry["doc"]
    assert entry["examples"].strip() and entry["return"], f"{path.stem}: EXAMPLES and RETURN are required"
    documented = doc.get("options") or {}
    spec = argument_spec(path, monkeypatch)
    assert sorted(documented) == sorted(spec), f"{path.stem}: documented options differ from argument_spec"
    for name, option in spec.items():
        doc_option = documented[name]
        assert doc_option.get("type", "str") == option.get("type", "str"), f"{path.stem}.{name}: type"
        if "default" in option:
            assert doc_option.get("default") == option["default"], f"{path.stem}.{name}: default"
