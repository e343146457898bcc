"""The public RFC 7208 test suite (openspf rfc7208-tests.yml) against bulkrelay.dns.spf.

The suite ships in the pinned pyspf sdist; it is fetched with `pip download` at test time and
cached under .pytest_cache (never committed). Each scenario's zonedata is served by a
StaticResolver, through the same resolver hook that live checks use, so this tests the
bulkrelay wiring as much as pyspf.

Suite convention (see the file's header): records labelled SPF are served as TXT when the
name has no TXT record, because RFC 7208 dropped the SPF RR type; "TXT: NONE" means no TXT
record; TIMEOUT makes queries time out for the types the name has no records of.
"""

from pathlib import Path

import pytest
import yaml
from conftest import read_sdist

from bulkrelay.dns import spf
from bulkrelay.dns.resolver import StaticResolver

PYSPF = "pyspf==2.0.14"
CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "bulkrelay-rfc7208"
SUITE = "rfc7208-tests.yml"
# cached under a name yamllint does not pick up (it lints every *.yml below the project)
CACHED = "rfc7208-tests.suite"

# Cases whose expected result we do not reach, each with the reason. Keep this list short and
# explained; a new failure outside it fails the build.
EXCEPTIONS: dict[str, str] = {}


def fetch_suite() -> Path:
    target = CACHE / CACHED
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = read_sdist(PYSPF)
    target.write_bytes(next(data for name, data in sdist.items() if name.endswith(f"test/{SUITE}")))
    return target


def zone_from(zonedata: dict) -> StaticResolver:
    zone: dict[str, list] = {}
    for name, entries in (zonedata or {}).items():
        items: list = []
        for entry in entries:
            if entry == "TIMEOUT":
                items.append(("TIMEOUT", None))
                continue
            ((rtype, value),) = entry.items()
            if rtype == "MX":
                value = (int(value[0]), value[1])
            elif rtype in ("TXT", "SPF"):
                value = [value] if isinstance(value, str) else list(value)
            items.append((rtype, value))
        if not any(t == "TXT" for t, _ in items):
            items += [("TXT", v) for t, v in items if t == "SPF"]
        # "TXT: NONE" says the name has no TXT record (and stops the SPF-as-TXT copy above)
        zone[name] = [(t, v) for t, v in items if not (t == "TXT" and v == ["NONE"])]
    return StaticResolver(zone)


def load_cases():
    path = fetch_suite()
    cases = []
    for doc_index, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
        if not doc:
            continue
        for name, case in doc["tests"].items():
            cases.append(pytest.param(doc["zonedata"], case, id=f"{doc_index:02d}-{name}"))
    return cases


@pytest.mark.parametrize(("zonedata", "case"), load_cases())
def test_rfc7208(zonedata, case, request):
    case_id = request.node.callspec.id.split("-", 1)[1]
    if case_id in EXCEPTIONS:
        pytest.xfail(EXCEPTIONS[case_id])
    source = zone_from(zonedata)
    ev = spf.evaluate(source, case["host"], case["mailfrom"], case["helo"], timeout=5)
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert ev.result in expected, f"{case.get('description', '')}: got {ev.result} ({ev.explanation})"
    if "explanation" in case and ev.result == "fail" and case["explanation"] != "DEFAULT":
        assert ev.explanation == case["explanation"]


def test_suite_is_complete():
    """Guard against a silently truncated download: the 2014.04 suite has 200+ cases."""
    assert len(load_cases()) >= 200
