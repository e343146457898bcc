"""Per-domain outbound TLS (relay_postfix__tls_policy_overrides): the validation rule, and the
role's templates rendered and read back by the host's own postconf/postmap (Postfix 3.7)."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import render_template

from bulkrelay import tlspolicy

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "relay_postfix"
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin:/sbin:/bin")
needs_postfix = pytest.mark.skipif(not POSTMAP, reason="postfix is not installed (lab/lab.sh installs it)")


def _filters() -> dict:
    path = ROLE / "filter_plugins" / "relay_postfix_checks.py"
    spec = importlib.util.spec_from_file_location("relay_postfix_checks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()


def render(template: str, **overrides) -> str:
    """A role template rendered as the template module does (trim_blocks), over the role defaults."""
    values = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values["relay_postfix__hostname"] = "relay.example.test"
    values["relay_postfix__admin_email"] = "postmaster@example.test"
    values["relay_postfix__all_limits"] = values["relay_postfix__destination_limits"]
    return render_template(ROLE, template, values | overrides, _filters())


@pytest.mark.parametrize(
    ("overrides", "bad"),
    [
        ({}, []),
        ({"partner.example": "encrypt"}, []),
        ({"partner.example": "encrypt", "broken.example": "may"}, []),
        ({level.replace("-", "") + ".example": level for level in tlspolicy.OVERRIDE_LEVELS}, []),
        ({"partner.example": "required"}, ["partner.example: required"]),
        ({"partner.example": "fingerprint"}, ["partner.example: fingerprint"]),  # needs match=
        ({"Partner.Example": "encrypt", "ok.example": "may"}, ["Partner.Example: encrypt"]),
        ({"localhost": "may", "a..example": "may"}, ["localhost: may", "a..example: may"]),
        ({"partner.example": None}, ["partner.example: None"]),
        # next hops a transport entry names ([host] or [host]:port) are keys too
        ({"[192.0.2.10]:25": "encrypt", "[mx.partner.example]": "secure", "[2001:db8::25]:25": "may"}, []),
        (
            {"[192.0.2.10]:99999": "may", "[]": "may", "[bad_host]": "may"},
            ["[192.0.2.10]:99999: may", "[]: may", "[bad_host]: may"],
        ),
        (["partner.example"], ["['partner.example'] (not a mapping of domain to level)"]),
    ],
)
def test_bad_overrides_are_named(overrides, bad):
    assert tlspolicy.bad_overrides(overrides) == bad
    assert _filters()["relay_postfix_bad_tls_overrides"](overrides) == bad


def test_the_table_holds_each_override_once_sorted():
    empty = render("etc/postfix/tls_policy.j2")
    assert [line for line in empty.splitlines() if not line.startswith("#")] == []
    assert empty.startswith("# managed by bulkrelay")
    two = render(
        "etc/postfix/tls_policy.j2",
        relay_postfix__tls_policy_overrides={"partner.example": "encrypt", "broken.example": "may"},
    )
    assert [line for line in two.splitlines() if not line.startswith("#")] == [
        "broken.example may",
        "partner.example encrypt",
    ]


def test_main_cf_names_the_table_and_turns_on_dnssec_only_for_dane():
    plain = render("etc/postfix/main.cf.j2")
    assert f"smtp_tls_policy_maps = {tlspolicy.TABLE}\n" in plain
    assert "smtp_dns_support_level" not in plain
    for overrides, level in (({"partner.example": "dane-only"}, "may"), ({}, "dane")):
        cf = render(
            "etc/postfix/main.cf.j2",
            relay_postfix__tls_policy_overrides=overrides,
            relay_postfix__smtp_tls_security_level=level,
        )
        assert "smtp_dns_support_level = dnssec\n" in cf


def test_the_role_writes_the_table_and_reloads():
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    tables = next(t for t in tasks if t["name"] == "Write the Postfix lookup tables")
    written = {f["dest"]: f["content"] for f in tables["bulkrelay_files"]["files"]}
    assert "etc/postfix/tls_policy.j2" in written["/etc/postfix/tls_policy"]
    assert tables["notify"] == "relay_postfix reload"  # texthash is read when a process starts


def test_the_audit_reads_the_table_the_role_writes():
    audit = yaml.safe_load((ROOT / "playbooks" / "audit.yml").read_text())
    read = next(t for t in audit[0]["tasks"] if "bulkrelay_read_state" in t)["bulkrelay_read_state"]
    assert read["commands"]["tls_policy"] == ["postmap", "-s", tlspolicy.TABLE]
    assert "smtp_tls_policy_maps" in read["commands"]["postconf"]


@needs_postfix
def test_postfix_reads_the_rendered_tables(tmp_path):
    overrides = {
        "partner.example": "encrypt",
        "broken.example": "may",
        "dane.example": "dane-only",
        "[198.51.100.22]:25": "encrypt",
    }
    (tmp_path / "main.cf").write_text(
        render("etc/postfix/main.cf.j2", relay_postfix__tls_policy_overrides=overrides)
    )
    (tmp_path / "tls_policy").write_text(
        render("etc/postfix/tls_policy.j2", relay_postfix__tls_policy_overrides=overrides)
    )

    def postfix(*argv):
        return subprocess.run(
            [str(Path(POSTMAP).parent / argv[0]), "-c", str(tmp_path), *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
        )

    maps = postfix("postconf", "-h", "smtp_tls_policy_maps").stdout.strip()
    assert maps == tlspolicy.TABLE
    assert postfix("postconf", "-h", "smtp_dns_support_level").stdout.strip() == "dnssec"
    table = "texthash:" + str(tmp_path / "tls_policy")
    for domain, level in overrides.items():
        assert postfix("postmap", "-q", domain, table).stdout.strip() == level
    missing = postfix("postmap", "-q", "other.example", table)
    assert (missing.returncode, missing.stdout) == (1, "")
    # what the audit reads (postmap -s) parses back into the overrides
    assert tlspolicy.parse_table(postfix("postmap", "-s", table).stdout) == overrides
