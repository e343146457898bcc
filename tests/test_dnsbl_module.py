"""library/bulkrelay_dnsbl.py run by ansible against a real UDP DNS server on loopback that
serves test blacklist zones: listed -> fails naming list and reason; clean -> ok; a dead list ->
UNKNOWN; check mode gives the same; never `changed`."""

import pytest
from conftest import run_module


def _listed(reason):
    return {"A": "127.0.0.2", "TXT": f'"{reason}"'}


# bl.test lists its RFC 5782 test point and 198.51.100.25; dead.test lists every address it is
# asked about, even the test point 127.0.0.1 that a working list never lists
LISTINGS = {
    "2.0.0.127.bl.test.": _listed("RFC 5782 test point"),
    "25.100.51.198.bl.test.": _listed("Listed for spam trap hits"),
    **{
        f"{ip}.dead.test.": _listed("everything is listed")
        for ip in ("1.0.0.127", "2.0.0.127", "26.100.51.198")
    },
}
DNS_TABLE = {(name, rdtype): value for name, rrs in LISTINGS.items() for rdtype, value in rrs.items()}


def run(args, check=False):
    return run_module("bulkrelay_dnsbl", args, check)


@pytest.mark.parametrize("check", [False, True])
def test_listed_fails_naming_list_and_reason(ns, check):
    res = run({"ips": ["198.51.100.25"], "nameservers": [ns], "lists": [{"zone": "bl.test"}]}, check)
    assert res["failed"] and not res["changed"]
    assert res["status"] == "CRITICAL"
    assert "198.51.100.25 listed on bl.test (127.0.0.2: Listed for spam trap hits)" in res["msg"]
    assert "request removal" in res["msg"]


@pytest.mark.parametrize("check", [False, True])
def test_clean_passes(ns, check):
    res = run({"ips": ["198.51.100.26"], "nameservers": [ns], "lists": [{"zone": "bl.test"}]}, check)
    assert not res.get("failed") and not res["changed"]
    assert res["status"] == "OK" and res["checked"] == 1 and res["listings"] == []


def test_dead_list_is_unknown_and_fails_only_on_request(ns):
    args = {"ips": ["198.51.100.26"], "nameservers": [ns], "lists": [{"zone": "dead.test"}]}
    res = run(args)
    assert not res.get("failed") and res["status"] == "UNKNOWN" and res["listings"] == []
    assert "dead list" in res["errors"][0]["error"]
    res = run({**args, "fail_on_error": True})
    assert res["failed"] and "dead list" in res["msg"]


def test_bad_input_names_the_problem(ns):
    res = run({"ips": ["not-an-ip"], "nameservers": [ns]})
    assert res["failed"] and "neither an IP address" in res["msg"] and "Traceback" not in res["msg"]
    res = run({"ips": ["192.0.2.1"], "lists": [{"zone": "dnsbl.sorbs.net"}], "nameservers": [ns]})
    assert res["failed"] and "SORBS" in res["msg"]
