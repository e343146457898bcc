"""TLS-RPT (RFC 8460): the record dns_records generates, and the audit's check against a real
UDP DNS server on loopback: PASS a valid record, FAIL a missing or invalid one (naming the
record to publish), ERROR ("could not tell") on SERVFAIL or a timeout."""

import pytest

from bulkrelay.dns import records, tlsrpt
from bulkrelay.dns.rdata import RecordError
from bulkrelay.dns.resolver import make_resolver

GOOD = '"v=TLSRPTv1; rua=mailto:tlsrpt@example.test"'
DNS_TABLE = {
    ("_smtp._tls.example.test.", "TXT"): GOOD,
    (
        "_smtp._tls.two-uris.test.",
        "TXT",
    ): '"v=TLSRPTv1;rua=mailto:a@two-uris.test, https://r.two-uris.test/v1;"',
    ("_smtp._tls.other-rua.test.", "TXT"): '"v=TLSRPTv1; rua=mailto:someone@elsewhere.test"',
    ("_smtp._tls.split.test.", "TXT"): '"v=TLSRPTv1; " "rua=mailto:tlsrpt@split.test"',
    ("_smtp._tls.bad-uri.test.", "TXT"): '"v=TLSRPTv1; rua=ftp://r.bad-uri.test"',
    ("_smtp._tls.no-rua.test.", "TXT"): '"v=TLSRPTv1; x-ext=1"',
    ("_smtp._tls.twice.test.", "TXT"): [GOOD, '"v=TLSRPTv1; rua=mailto:b@twice.test"'],
    ("_smtp._tls.not-tlsrpt.test.", "TXT"): '"v=TLSRPTv10; rua=mailto:a@not-tlsrpt.test"',
    ("_smtp._tls.nodata.test.", "TXT"): "nodata",
    ("_smtp._tls.broken.test.", "TXT"): "servfail",
    ("_smtp._tls.silent.test.", "TXT"): "drop",
}


@pytest.fixture(scope="module")
def resolver(ns):
    return make_resolver([ns], 0.5)


@pytest.mark.parametrize(
    ("domain", "rua"),
    [
        ("example.test", ["mailto:tlsrpt@example.test"]),
        ("two-uris.test", ["mailto:a@two-uris.test", "https://r.two-uris.test/v1"]),
        ("split.test", ["mailto:tlsrpt@split.test"]),  # a record split into two strings
    ],
)
def test_a_valid_record_passes(resolver, domain, rua):
    result = tlsrpt.check(resolver, domain)
    assert result.status == "pass", result.message
    assert result.details["rua"] == rua and result.fix == ""
    # the inventory's URIs, {domain} replaced, match: still a pass
    assert tlsrpt.check(resolver, domain, rua=[u.replace(domain, "{domain}") for u in rua]).status == "pass"


def test_a_record_with_other_uris_than_the_inventory_is_a_warning(resolver):
    result = tlsrpt.check(resolver, "other-rua.test", rua=["mailto:tlsrpt@{domain}"])
    assert result.status == "warn" and "not to mailto:tlsrpt@other-rua.test" in result.message
    assert (
        result.fix
        == 'publish TXT at _smtp._tls.other-rua.test: "v=TLSRPTv1; rua=mailto:tlsrpt@other-rua.test"'
    )


@pytest.mark.parametrize(
    ("domain", "words"),
    [
        ("missing.test", "no TLS-RPT record at _smtp._tls.missing.test"),  # NXDOMAIN
        ("nodata.test", "no TLS-RPT record"),
        ("not-tlsrpt.test", "no TLS-RPT record"),  # v=TLSRPTv10 is not v=TLSRPTv1
        ("bad-uri.test", "'ftp://r.bad-uri.test' is neither a mailto: nor an https: URI"),
        ("no-rua.test", "the rua= field (where reports go) is missing"),
        ("twice.test", "has 2 TLS-RPT records: senders then report to none"),
    ],
)
def test_a_missing_or_invalid_record_fails_and_names_the_record_to_publish(resolver, domain, words):
    result = tlsrpt.check(resolver, domain, rua=["mailto:tls@{domain}", "https://tls.example.test/r"])
    assert result.status == "fail" and words in result.message, result.message
    assert result.fix == (
        f'publish TXT at _smtp._tls.{domain}: "v=TLSRPTv1; rua=mailto:tls@{domain},https://tls.example.test/r"'
    )


@pytest.mark.parametrize("domain", ["broken.test", "silent.test"])
def test_servfail_or_timeout_is_could_not_tell(resolver, domain):
    result = tlsrpt.check(resolver, domain)
    assert result.status == "error" and result.message.startswith("could not tell"), result.message
    assert result.failed


@pytest.mark.parametrize(
    ("txt", "errors"),
    [
        ("v=TLSRPTv1; rua=mailto:a@x.test", []),
        ("v=TLSRPTv1 ; rua=mailto:a@x.test ; x.ext-1=anything;", []),
        ("rua=mailto:a@x.test; v=TLSRPTv1", ["the record must start with v=TLSRPTv1"]),
        ("v=TLSRPTv1; rua=mailto:a@x.test; rua=mailto:b@x.test", ["'rua' appears twice"]),
        ("v=TLSRPTv1; rua=mailto:a@x.test; junk", ["'junk' is not name=value"]),
        ("v=TLSRPTv1; rua=mailto:nobody", ["'mailto:nobody' is not mailto:address@domain"]),
        ("v=TLSRPTv1; rua=https://", ["'https://' is not https://host/path"]),
        ("v=TLSRPTv1; rua=mailto:a@x.test!10m", ["'mailto:a@x.test!10m' is not mailto:address@domain"]),
    ],
)
def test_record_syntax(txt, errors):
    assert tlsrpt.parse_record(txt)[1] == errors


BASE = {
    "relay_fqdn": "relay.example.test",
    "ipv4": "198.51.100.25",
    "ipv6": "",
    "bounce_domain": "",
    "bounce_mx": "",
    "relay_mx": "mail.example.test",
    "live_spf": {},
    "dkim": {},
}


def tlsrpt_records(out):
    return [(r.name, r.txt, r.group) for r in out.records if r.name.startswith("_smtp._tls.")]


def test_dns_records_adds_one_tlsrpt_record_per_sending_domain_only_when_asked():
    assert tlsrpt_records(records.generate(sending_domains=["example.test"], **BASE)) == []
    one = records.generate(sending_domains=["example.test"], tlsrpt_rua=["mailto:tlsrpt@{domain}"], **BASE)
    assert tlsrpt_records(one) == [
        ("_smtp._tls.example.test", "v=TLSRPTv1; rua=mailto:tlsrpt@example.test", "example.test")
    ]
    two = records.generate(
        sending_domains=["example.test", "example.org"],
        tlsrpt_rua=["mailto:tlsrpt@example.test", "https://reports.example.test/tlsrpt"],
        **BASE,
    )
    rua = "mailto:tlsrpt@example.test,https://reports.example.test/tlsrpt"
    assert tlsrpt_records(two) == [
        ("_smtp._tls.example.test", f"v=TLSRPTv1; rua={rua}", "example.test"),
        ("_smtp._tls.example.org", f"v=TLSRPTv1; rua={rua}", "example.org"),
    ]
    # what is generated passes the audit's own syntax check
    assert all(tlsrpt.parse_record(txt)[1] == [] for _, txt, _ in tlsrpt_records(two))


@pytest.mark.parametrize("rua", [["tlsrpt@example.test"], ["mailto:tlsrpt"], ["http://r.example.test/"]])
def test_a_bad_report_uri_is_a_clear_error(rua):
    with pytest.raises(RecordError, match=r"bulkrelay_tlsrpt_rua: .* \(list mailto: or https: URIs\)"):
        records.generate(sending_domains=["example.test"], tlsrpt_rua=rua, **BASE)
