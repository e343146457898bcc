"""The record generator: SPF merging, TXT splitting, lookup counting, the full record set, the
files written for people to paste (and the module writing them)."""

import json
import stat

import pytest
from conftest import run_module

from bulkrelay.dns import records, spf
from bulkrelay.dns.resolver import StaticResolver

IP4 = "198.51.100.25"
IP6 = "2001:db8:100::25"


@pytest.mark.parametrize(
    ("existing", "expected", "changed"),
    [
        ([], f"v=spf1 ip4:{IP4} mx ~all", True),
        (["v=spf1 mx -all"], f"v=spf1 ip4:{IP4} mx -all", True),
        ([f"v=spf1 ip4:{IP4} mx -all"], f"v=spf1 ip4:{IP4} mx -all", False),
        (["v=spf1 ip4:198.51.100.0/24 -all"], "v=spf1 ip4:198.51.100.0/24 -all", False),
        (["v=spf1 -ip4:198.51.100.0/24 -all"], f"v=spf1 ip4:{IP4} -ip4:198.51.100.0/24 -all", True),
        (["v=spf1 redirect=_spf.example.test"], f"v=spf1 ip4:{IP4} redirect=_spf.example.test", True),
        (
            ["V=SPF1 include:_spf.provider.test ~all"],
            f"v=spf1 ip4:{IP4} include:_spf.provider.test ~all",
            True,
        ),
    ],
)
def test_merge_spf_keeps_the_live_record(existing, expected, changed):
    merged = spf.merge_spf(existing, IP4)
    assert merged.record == expected
    assert merged.changed is changed


def test_merge_spf_v6_and_multiple_records():
    merged = spf.merge_spf(["v=spf1 mx -all", "v=spf1 a -all"], IP4, IP6, domain="example.test")
    assert merged.record == f"v=spf1 ip4:{IP4} ip6:{IP6} mx -all"
    assert "2 SPF records of example.test" in merged.warnings[0]
    with pytest.raises(records.RecordError, match="IPv4"):
        spf.merge_spf([], IP6)


def test_merge_spf_warns_on_lookups_and_length():
    many = "v=spf1 " + " ".join(f"include:i{n}.example.test" for n in range(11)) + " -all"
    merged = spf.merge_spf([many], IP4)
    assert any("11 DNS-lookup terms" in w for w in merged.warnings)
    long = "v=spf1 " + " ".join(f"ip4:192.0.2.{n}" for n in range(30)) + " -all"
    merged = spf.merge_spf([long], IP4)
    assert any("published as 2 strings" in w for w in merged.warnings)


def test_split_and_quote_txt():
    value = "p=" + "A" * 600
    parts = records.split_txt(value)
    assert [len(p) for p in parts] == [255, 255, 92]
    assert "".join(parts) == value
    assert records.quote_txt('a"b\\c') == '"a\\"b\\\\c"'
    assert records.split_txt("") == [""]
    # a multi-byte character is never cut in two
    parts = records.split_txt("x" * 254 + "é" + "y")
    assert parts[0] == "x" * 254 and parts[1] == "éy"


def test_count_lookups_walks_includes_and_voids():
    z = StaticResolver(
        {
            "a.test": [("TXT", "v=spf1 include:b.test mx:gone.test a:also-gone.test -all")],
            "b.test": [("TXT", "v=spf1 include:c.test ip4:192.0.2.1 -all")],
            "c.test": [("TXT", "v=spf1 exists:%{i}.x.test -all")],
        }
    )
    count = spf.count_lookups(z, "a.test", z.query("a.test", "TXT").texts()[0])
    assert count.lookups == 5  # include:b, mx, a, include:c, exists
    assert count.void_lookups == 2
    assert count.unresolved == []  # exists counts but needs no resolution here
    broken = StaticResolver({"a.test": [("TXT", "v=spf1 include:none.test -all")]})
    count = spf.count_lookups(broken, "a.test", "v=spf1 include:none.test -all")
    assert "has no SPF record" in count.problems[0]


def generate(**kw):
    args = {
        "relay_fqdn": "relay.example.test",
        "ipv4": IP4,
        "ipv6": IP6,
        "sending_domains": ["example.test"],
        "bounce_domain": "bounce.example.test",
        "bounce_mx": "mail.example.test",
        "relay_mx": "mail.example.test",
        "live_spf": {"example.test": ["v=spf1 mx ~all"]},
        "dkim": {"example.test": {"selector": "lab2026", "txt": "v=DKIM1; k=rsa; p=" + "B" * 400}},
        "dmarc_rua": "dmarc@{domain}",
    }
    args.update(kw)
    return records.generate(**args)


def test_generate_full_set():
    out = generate()
    got = {(r.fqdn, r.type): r for r in out.records}
    assert got[("relay.example.test.", "A")].value == IP4
    assert got[("relay.example.test.", "AAAA")].value == IP6
    assert got[("relay.example.test.", "MX")].value == "10 mail.example.test."
    assert "accepts no inbound mail" in got[("relay.example.test.", "MX")].purpose
    assert got[("example.test.", "TXT")].txt == f"v=spf1 ip4:{IP4} ip6:{IP6} mx ~all"
    assert got[("bounce.example.test.", "TXT")].txt == f"v=spf1 ip4:{IP4} ip6:{IP6} mx ~all"
    assert got[("bounce.example.test.", "MX")].value == "10 mail.example.test."
    dkim_rec = got[("lab2026._domainkey.example.test.", "TXT")]
    assert dkim_rec.value.count('" "') == 1  # 419 bytes -> two strings
    assert got[("_dmarc.example.test.", "TXT")].txt == (
        "v=DMARC1; p=none; rua=mailto:dmarc@example.test; adkim=r; aspf=r"
    )
    data = out.as_dict()
    assert set(data["groups"]) == {"relay", "example.test", "bounce.example.test"}
    assert out.warnings == []


def test_generate_normalizes_a_folded_dkim_key():
    out = generate(dkim={"example.test": {"selector": "s1", "txt": "v=DKIM1;  k=rsa;\n p=AB CD\n EF=="}})
    got = {(r.fqdn, r.type): r for r in out.records}
    assert got[("s1._domainkey.example.test.", "TXT")].txt == "v=DKIM1; k=rsa; p=ABCDEF=="
    with pytest.raises(records.RecordError, match=r"DKIM public key TXT for example\.test does not parse"):
        generate(dkim={"example.test": {"selector": "s1", "txt": "garbage"}})


def test_generate_keeps_live_dmarc_and_warns_without_dkim():
    out = generate(dkim={}, live_dmarc={"example.test": ["v=DMARC1; p=reject"]})
    got = {(r.fqdn, r.type): r for r in out.records}
    assert got[("_dmarc.example.test.", "TXT")].txt == "v=DMARC1; p=reject"
    assert ("lab2026._domainkey.example.test.", "TXT") not in got
    assert "no DKIM public key for example.test" in out.warnings[0]


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"relay_fqdn": "relay"}, "bulkrelay_fqdn must be a full domain name"),
        ({"ipv4": "2001:db8::1"}, "bulkrelay_ipv4 must be an IPv4"),
        ({"ipv4": "", "ipv6": ""}, "needs an address"),
        ({"bounce_mx": "relay.example.test"}, "bulkrelay_bounce_mx is the relay itself"),
        ({"relay_mx": "relay.example.test."}, "must not point at the relay"),
        ({"sending_domains": []}, "bulkrelay_sending_domains is empty"),
    ],
)
def test_generate_rejects_bad_input(kw, words):
    with pytest.raises(records.RecordError, match=words):
        generate(**kw)


def test_ptr_request_note():
    note = records.ptr_request("relay.example.test", IP6, ["198.51.100.53"])
    assert "Please set the reverse DNS (PTR) record of **2001:db8:100::25** to **relay.example.test**" in note
    assert "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.8.b.d.0.1.0.0.2.ip6.arpa." in note
    assert "HELO/EHLO relay.example.test" in note
    assert "dig +short -x 2001:db8:100::25 @198.51.100.53" in note


def plan(**kw):
    args = {
        "relay_fqdn": "relay.example.test",
        "ipv4": IP4,
        "ipv6": "",
        "sending_domains": ["example.test", "news.example.test."],
        "bounce_domain": "bounce.example.test",
        "bounce_mx": "mail.example.test",
        "relay_mx": "mail.example.test",
        "live_txt": {},
        "live_dmarc_txt": {},
        "dkim": {},
    }
    args.update(kw)
    return records.plan(**args)


def test_spf_names_are_the_sending_domains_then_the_bounce_domain_once():
    assert records.spf_names(["a.test.", "b.test"], "bounce.test") == ["a.test", "b.test", "bounce.test"]
    assert records.spf_names(["a.test"], "a.test.") == ["a.test"]
    assert records.spf_names(["a.test"], "") == ["a.test"]


def test_plan_keeps_other_txt_and_the_published_split_of_an_unchanged_spf():
    merged = f"v=spf1 ip4:{IP4} mx -all"
    out = plan(
        live_txt={
            "example.test": [
                ("site-verification=abc", '"site-verification=abc"'),
                (merged, f'"v=spf1 ip4:{IP4}" " mx -all"'),
            ],
            "news.example.test": [("v=spf1 mx -all", '"v=spf1 mx -all"')],
        },
        live_dmarc_txt={"_dmarc.example.test": [("v=DMARC1; p=reject", '"v=DMARC1; p=reject"')]},
    )
    sets = {(s["fqdn"], s["type"]): s for s in out.rrsets}
    assert sets[("example.test.", "TXT")]["rdata"] == [
        '"site-verification=abc"',
        f'"v=spf1 ip4:{IP4}" " mx -all"',
    ]
    assert sets[("news.example.test.", "TXT")]["rdata"] == [f'"v=spf1 ip4:{IP4} mx -all"']
    assert sets[("bounce.example.test.", "TXT")]["rdata"] == [f'"v=spf1 ip4:{IP4} mx ~all"']
    assert sets[("_dmarc.example.test.", "TXT")]["rdata"] == ['"v=DMARC1; p=reject"']
    assert out.spf == {
        "example.test": merged,
        "news.example.test": f"v=spf1 ip4:{IP4} mx -all",
        "bounce.example.test": f"v=spf1 ip4:{IP4} mx ~all",
    }
    assert {r["fqdn"] for r in out.groups["relay"]} == {"relay.example.test."}
    assert len(out.records) == sum(len(s["rdata"]) for s in out.rrsets) - 1  # + the kept other TXT


def test_plan_spf_existing_replaces_the_live_record_and_ptr_notes_cover_each_address():
    out = plan(ipv6=IP6, spf_existing={"example.test.": "v=spf1 a -all"}, nameservers=["198.51.100.53"])
    assert out.spf["example.test"] == f"v=spf1 ip4:{IP4} ip6:{IP6} a -all"
    assert [p["ip"] for p in out.ptr_requests] == [IP4, IP6]
    assert out.ptr_requests[0]["ptr_owner"] == "25.100.51.198.in-addr.arpa."
    assert out.ptr_requests[1]["text"] == records.ptr_request("relay.example.test", IP6, ["198.51.100.53"])
    assert "no DKIM public key for example.test" in out.warnings[0]


def test_plan_rejects_bad_input_like_generate():
    with pytest.raises(records.RecordError, match="must not point at the relay"):
        plan(relay_mx="relay.example.test")


def test_lookup_warnings_name_what_receivers_refuse():
    record = "v=spf1 " + " ".join(f"a:h{i}.test" for i in range(11)) + " include:none.test -all"
    warnings = spf.lookup_warnings(StaticResolver({}), "a.test", record)
    assert "SPF of a.test needs 12 DNS lookups (limit 10)" in warnings[0]
    assert "SPF of a.test has 12 void lookups (limit 2)" in warnings[1]
    assert "has no SPF record" in warnings[2]
    fine = StaticResolver({"b.test": [("TXT", "v=spf1 ip4:192.0.2.1 -all")]})
    assert spf.lookup_warnings(fine, "a.test", "v=spf1 include:b.test -all") == []


def test_output_files_per_group_and_address():
    out = plan(
        ipv6=IP6, dkim={"example.test": {"selector": "lab", "txt": "v=DKIM1; k=ed25519; p=" + "A" * 43}}
    )
    files = records.output_files(out, relay_fqdn="relay.example.test.", ipv4=IP4, ipv6=IP6)
    groups = ["relay", "example.test", "news.example.test", "bounce.example.test"]
    assert set(files) == {f"{g}.{ext}" for g in groups for ext in ("zone", "json", "md")} | {
        f"ptr-request-{IP4}.md",
        "ptr-request-2001_db8_100__25.md",
    }
    zone = files["example.test.zone"]
    assert zone.startswith("; managed by bulkrelay") and zone.endswith("\n")
    assert f'example.test.\t3600\tIN\tTXT\t"v=spf1 ip4:{IP4} ip6:{IP6} mx ~all"' in zone
    data = json.loads(files["relay.json"])
    assert data["group"] == "relay" and data["relay"] == "relay.example.test"
    assert {r["type"] for r in data["records"]} == {"A", "AAAA", "MX", "TXT"}
    summary = files["example.test.md"]
    assert f"For relay **relay.example.test** ({IP4}, {IP6})." in summary
    assert "| `lab._domainkey.example.test.` | TXT | `v=DKIM1; k=ed25519; p=" in summary
    assert "DMARC path" in summary and "DMARC path" not in files["relay.md"]
    assert "## Warnings" in summary and "- no DKIM public key for news.example.test" in summary
    assert "**198.51.100.25** to **relay.example.test**" in files[f"ptr-request-{IP4}.md"]


def test_output_files_without_warnings_or_ipv6():
    out = plan(
        sending_domains=["example.test"],
        bounce_domain="",
        dkim={"example.test": {"selector": "lab", "txt": "v=DKIM1; k=ed25519; p=" + "A" * 43}},
    )
    assert out.warnings == []
    files = records.output_files(out, relay_fqdn="relay.example.test", ipv4=IP4, ipv6="")
    assert sorted(files) == [
        "example.test.json",
        "example.test.md",
        "example.test.zone",
        f"ptr-request-{IP4}.md",
        "relay.json",
        "relay.md",
        "relay.zone",
    ]
    assert "Warnings" not in files["example.test.md"] and f"({IP4})." in files["example.test.md"]


# --- the module writes the files: once, then nothing; check mode and --diff tell the truth --------

MODULE_ARGS = {
    "relay_fqdn": "relay.example.test",
    "ipv4": IP4,
    "sending_domains": ["example.test"],
    "bounce_domain": "bounce.example.test",
    "bounce_mx": "mail.example.test",
    "relay_mx": "mail.example.test",
    "live": False,
}
FILES = sorted(
    [f"{g}.{ext}" for g in ("relay", "example.test", "bounce.example.test") for ext in ("zone", "json", "md")]
    + [f"ptr-request-{IP4}.md"]
)


def write(out, check=False, diff=False):
    args = {**MODULE_ARGS, "output_dir": str(out)}
    result = run_module(
        "bulkrelay_dns_records", args, check=check, diff=diff, library="roles/dns_records/library"
    )
    assert not result.get("failed"), result.get("msg")
    return result


def contents(out):
    return {p.name: (p.read_text(), stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()}


def test_module_writes_the_files_once(tmp_path):
    out = tmp_path / "build" / "relay"
    first = write(out, diff=True)
    assert first["changed"] is True and first["files_changed"] == FILES
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert {mode for _, mode in contents(out).values()} == {0o644}
    zone_diff = next(d for d in first["diff"] if d["after_header"] == str(out / "relay.zone"))
    assert zone_diff["before"] == "" and zone_diff["after"] == (out / "relay.zone").read_text()
    again = write(out, diff=True)
    assert again["changed"] is False and again["files_changed"] == [] and again["diff"] == []


def test_module_rewrites_only_what_differs_and_check_mode_writes_nothing(tmp_path):
    out = tmp_path / "relay"
    write(out)
    good = contents(out)
    (out / "example.test.zone").write_text("; edited by hand\n")
    (out / "relay.md").chmod(0o600)
    edited = contents(out)
    for check in (True, False):
        result = write(out, check=check, diff=True)
        assert result["changed"] is True
        assert result["files_changed"] == ["example.test.zone", "relay.md"]
        zone, mode = result["diff"]
        assert zone["before"] == "; edited by hand\n" and zone["after"] == good["example.test.zone"][0]
        assert mode["before"] == {"mode": "0600"} and mode["after"] == {"mode": "0644"}
        assert contents(out) == (edited if check else good)
    assert write(out)["changed"] is False


def test_module_check_mode_creates_no_folder(tmp_path):
    result = write(tmp_path / "relay", check=True)
    assert result["changed"] is True and result["files_changed"] == FILES
    assert not (tmp_path / "relay").exists()
