"""The audit report: table and HTML rendering, bad input, and the page in headless Chromium."""

import json
import shutil
import subprocess

import pytest

from bulkrelay import report
from bulkrelay.cli import UsageError, main

AUDIT = {
    "ran_at": "2026-11-27T22:00:00+00:00",
    "checks": [
        {"host": "relay1", "check": "spf", "subject": "example.test", "status": "pass", "message": "pass"},
        {
            "host": "relay1",
            "check": "fcrdns",
            "subject": "198.51.100.25",
            "status": "fail",
            "message": "PTR is wrong.example.test",
            "fix": "ask the provider for PTR relay.example.test",
        },
        {
            "host": "relay1",
            "check": "dmarc",
            "subject": "example.test",
            "status": "warn",
            "message": "p=none",
        },
        {"host": "relay1", "check": "dnsbl", "subject": "198.51.100.25", "status": "error", "message": "<x>"},
    ],
}


@pytest.fixture
def audit_file(tmp_path):
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(AUDIT))
    return path


def test_failures_come_first_and_verdict_is_fail():
    rows = report.ordered(AUDIT["checks"])
    assert [r["status"] for r in rows] == ["fail", "error", "warn", "pass"]
    assert report.verdict(AUDIT["checks"]) == "fail"
    assert report.verdict(AUDIT["checks"][:1]) == "pass"


def test_table_names_the_fix_and_summary():
    text = report.render_table(AUDIT, width=100)
    assert "ask the provider for PTR relay.example.test" in " ".join(text.split())
    assert all(len(line) <= 100 for line in text.splitlines()[2:-2])
    assert text.splitlines()[2].startswith("FAIL")
    assert "audit FAIL: 1 fail, 1 error, 1 warn, 1 pass" in text


def test_html_escapes_messages():
    page = report.render_html(AUDIT)
    assert "&lt;x&gt;" in page and "<x>" not in page


def test_cli_writes_html_and_exits_1_on_failure(audit_file, capsys):
    assert main(["report", str(audit_file)]) == 1
    assert audit_file.with_suffix(".html").exists()
    assert "fcrdns" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "not a readable audit JSON"), ('{"checks": [{"status": "maybe"}]}', "no valid status")],
)
def test_bad_json_is_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=expected):
        report.load(path)


def test_missing_file_says_run_the_audit(tmp_path):
    with pytest.raises(UsageError, match=r"run playbooks/audit\.yml"):
        report.load(tmp_path / "none.json")


def chromium(*args):
    binary = shutil.which("chromium")
    assert binary, "chromium is installed by lab/lab.sh up (make test runs it first)"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def test_page_renders_in_chromium_with_failures_visible(tmp_path):
    page = tmp_path / "audit.html"
    report.write_html(AUDIT, page)
    profile = tmp_path / "profile"
    dom = chromium(f"--user-data-dir={profile}", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="verdict">FAIL<' in dom.stdout
    assert 'data-status="fail"' in dom.stdout and "fcrdns" in dom.stdout
    shot = tmp_path / "shot.png"
    result = chromium(
        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,800", page.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


CONTRAST_PROBE = """<script>
function rgb(c){const m=c.match(/[\\d.]+/g).map(Number);return m.length>3&&m[3]===0?null:m.slice(0,3);}
function lum(c){const [r,g,b]=c.map(v=>{v/=255;return v<=0.03928?v/12.92:Math.pow((v+0.055)/1.055,2.4);});
  return 0.2126*r+0.7152*g+0.0722*b;}
function bg(el){for(;el;el=el.parentElement){const c=rgb(getComputedStyle(el).backgroundColor);if(c)return c;}
  return [255,255,255];}
const worst=[];
document.querySelectorAll('td, th, .badge, .verdict, h1, h2, .meta').forEach(el=>{
  const a=lum(rgb(getComputedStyle(el).color)), b=lum(bg(el));
  const ratio=(Math.max(a,b)+0.05)/(Math.min(a,b)+0.05);
  if(ratio<4.5) worst.push(el.tagName+'.'+el.className+'='+ratio.toFixed(2));
});
document.body.setAttribute('data-low-contrast', worst.join(' ') || 'none');
</script>"""


def test_page_is_grouped_by_concern_and_readable_in_chromium(tmp_path):
    checks = [
        *AUDIT["checks"],
        {
            "host": "relay1",
            "check": "reach",
            "subject": "198.51.100.25 port 25",
            "status": "pass",
            "message": "ok",
        },
        {"host": "relay1", "check": "postfix", "subject": "mynetworks", "status": "fail", "message": "wide"},
    ]
    page = report.render_html({"ran_at": "now", "checks": checks})
    titles = [s.split('"')[0] for s in page.split('<section data-concern="')[1:]]
    assert titles == ["Reachability from outside", "Postfix", "DNS records", "Blacklists"]
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CONTRAST_PROBE + "</body>"))
    dom = chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-low-contrast="none"' in dom.stdout, dom.stdout.split("data-low-contrast=")[1][:500]
