"""Every Ansible module of the project documents exactly the options its code accepts: the
DOCUMENTATION (with its shared fragments, as ansible-doc renders it) against the module's
argument_spec, key by key, with type and default."""

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted([*ROOT.glob("library/*.py"), *ROOT.glob("roles/*/library/*.py")])


def argument_spec(path: Path) -> dict:
    """The literal argument_spec passed to AnsibleModule in the module's source."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "AnsibleModule":
            spec = next(k.value for k in node.keywords if k.arg == "argument_spec")
            return ast.literal_eval(spec)
    raise AssertionError(f"{path.name}: no AnsibleModule(argument_spec=...) call")


@pytest.fixture(scope="module")
def rendered() -> dict:
    """ansible-doc's view of every module (one call: it takes a second or two to start)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    dirs = sorted({str(p.parent) for p in MODULES})
    proc = subprocess.run(
        ["ansible-doc", "-t", "module", "--json", *(f"-M{d}" for d in dirs), *(p.stem for p in MODULES)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_documented_options_are_the_accepted_ones(rendered, path):
    entry = rendered[path.stem]
    doc = entry["doc"]
    assert entry["examples"].strip() and entry["return"], f"{path.stem}: EXAMPLES and RETURN are required"
    documented = doc.get("options") or {}
    spec = argument_spec(path)
    assert sorted(documented) == sorted(spec), f"{path.stem}: documented options differ from argument_spec"
    for name, option in spec.items():
        doc_option = documented[name]
        assert doc_option.get("type", "str") == option.get("type", "str"), f"{path.stem}.{name}: type"
        if "default" in option:
            assert doc_option.get("default") == option["default"], f"{path.stem}.{name}: default"
