"""Nagios verdicts and output: thresholds, UNKNOWN never hidden, perfdata, no '|' in text."""

import pytest

from bulkrelay.dnsbl.checker import CheckResult, QueryResult
from bulkrelay.dnsbl.report import EXIT_CODES, Thresholds, as_dict, plugin_output, status_of


def result(listed=0, errors=0, clean=1, allow=0):
    r = CheckResult(targets=["198.51.100.25"], lists=[], checked_at="2026-01-01T00:00:00Z", elapsed=0.25)
    for i in range(listed):
        r.results.append(
            QueryResult("198.51.100.25", f"bl{i}.test", "BL", "listed", codes=("127.0.0.2",), reason="a|b")
        )
    for i in range(errors):
        r.results.append(QueryResult("198.51.100.25", f"err{i}.test", "E", "error", error="timeout"))
    for i in range(clean):
        r.results.append(QueryResult("198.51.100.25", f"ok{i}.test", "OK", "clean"))
    for i in range(allow):
        r.results.append(
            QueryResult("198.51.100.25", f"wl{i}.test", "WL", "listed", allowlist=True, codes=("127.0.10.1",))
        )
    r.lists = sorted({q.zone for q in r.results})
    return r


@pytest.mark.parametrize(
    ("listed", "errors", "w", "c", "status"),
    [
        (0, 0, 1, 1, "OK"),
        (1, 0, 1, 1, "CRITICAL"),
        (1, 0, 1, 2, "WARNING"),
        (2, 0, 1, 2, "CRITICAL"),
        (0, 1, 1, 1, "UNKNOWN"),
        (1, 1, 1, 2, "UNKNOWN"),  # a silent list might be the second listing
        (2, 1, 1, 2, "CRITICAL"),
    ],
)
def test_status_thresholds(listed, errors, w, c, status):
    assert status_of(result(listed, errors), Thresholds(w, c)) == status


def test_allowlist_hits_never_count():
    assert status_of(result(allow=3), Thresholds()) == "OK"


def test_thresholds_validated():
    with pytest.raises(ValueError, match="warning must be <= critical"):
        Thresholds(3, 2)
    with pytest.raises(ValueError, match="at least 1"):
        Thresholds(0, 1)


def test_plugin_output_format():
    text, code = plugin_output(result(listed=1, errors=1, clean=2), Thresholds())
    first, *rest = text.splitlines()
    summary, perf = first.split(" | ")
    assert code == EXIT_CODES["CRITICAL"] == 2
    assert summary.startswith("DNSBL CRITICAL - 198.51.100.25 listed on bl0.test (127.0.0.2: a/b)")
    assert "1 of 4 lists could not be checked: err0.test (timeout)" in summary
    assert perf == "listed=1;0;0;0;4 checked=3;;;0;4 errors=1;;;0 time=0.250s;;;0"
    assert "|" not in "\n".join(rest)


def _nagios_alerts(value: int, threshold: str) -> bool:
    """The guidelines' plain "N" range: OK from 0 to N inclusive, alert outside it."""
    return not 0 <= value <= int(threshold)


@pytest.mark.parametrize(("w", "c"), [(1, 1), (1, 2), (2, 5)])
def test_perfdata_thresholds_draw_the_line_the_plugin_acts_on(w, c):
    for listed in range(7):
        status = status_of(result(listed=listed), Thresholds(w, c))
        text, _ = plugin_output(result(listed=listed), Thresholds(w, c))
        _, warn, crit, *_ = text.split(" | ")[1].split()[0].split(";")
        assert _nagios_alerts(listed, crit) == (status == "CRITICAL"), (listed, text)
        assert _nagios_alerts(listed, warn) == (status in ("WARNING", "CRITICAL")), (listed, text)


def test_ok_summary_and_json_shape():
    text, code = plugin_output(result(clean=3), Thresholds())
    assert code == 0 and text.startswith("DNSBL OK - 198.51.100.25 not listed on 3 lists")
    data = as_dict(result(listed=1), Thresholds())
    assert data["status"] == "CRITICAL"
    assert set(data["listings"][0]) >= {"target", "zone", "codes", "reason"}
    assert data["checked_at"].endswith("Z")
