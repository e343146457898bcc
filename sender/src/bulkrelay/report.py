"""The audit report as people read it: a terminal table and a self-contained HTML page.

Input is the audit's JSON: ``{"ran_at": ISO-8601, "checks": [{"host", "check", "subject",
"status", "message", "fix", ...}]}`` where status is pass, warn, fail or error. The HTML page
embeds its style, needs no network and puts failures first, so the page answers "what do I
have to fix" before anything else.
"""

from __future__ import annotations

import html
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

from bulkrelay.cli import UsageError

STATUS_ORDER = {"fail": 0, "error": 1, "warn": 2, "pass": 3}
STATUS_LABEL = {"fail": "FAIL", "error": "ERROR", "warn": "WARN", "pass": "PASS"}


def load(path: Path) -> dict[str, Any]:
    """Read and check an audit JSON file; a broken file is the operator's problem, told plainly."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; run playbooks/audit.yml first") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable audit JSON file ({exc})") from None
    checks = document.get("checks") if isinstance(document, dict) else None
    if not isinstance(checks, list):
        raise UsageError(f"{path}: expected an object with a 'checks' list (the audit playbook's JSON)")
    for number, check in enumerate(checks, 1):
        if not isinstance(check, dict) or check.get("status") not in STATUS_ORDER:
            raise UsageError(
                f"{path}: check #{number} has no valid status (want one of {', '.join(STATUS_ORDER)})"
            )
    return document


def ordered(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        checks,
        key=lambda c: (
            STATUS_ORDER[c["status"]],
            c.get("host", ""),
            c.get("check", ""),
            c.get("subject", ""),
        ),
    )


def counts(checks: list[dict[str, Any]]) -> dict[str, int]:
    result = dict.fromkeys(STATUS_ORDER, 0)
    for check in checks:
        result[check["status"]] += 1
    return result


def verdict(checks: list[dict[str, Any]]) -> str:
    tally = counts(checks)
    if tally["fail"] or tally["error"]:
        return "fail"
    return "warn" if tally["warn"] else "pass"


def render_table(document: dict[str, Any], width: int | None = None) -> str:
    """Plain-text table for a terminal or a cron mail; long messages wrap in their column."""
    checks = ordered(document["checks"])
    width = width or shutil.get_terminal_size((120, 20)).columns
    rows = [
        (STATUS_LABEL[c["status"]], c.get("host", ""), c.get("check", ""), c.get("subject", ""), _detail(c))
        for c in checks
    ]
    headers = ("STATUS", "HOST", "CHECK", "SUBJECT", "DETAIL")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers[:4])]
    detail_width = max(30, width - sum(widths) - 2 * 4)
    lines = [_row(headers, widths, detail_width)[0], "-" * min(width, sum(widths) + 8 + detail_width)]
    for row in rows:
        lines.extend(_row(row, widths, detail_width))
    tally = counts(checks)
    summary = ", ".join(f"{n} {STATUS_LABEL[s].lower()}" for s, n in tally.items() if n)
    lines.append("")
    lines.append(
        f"audit {verdict(checks).upper()}: {summary or 'no checks'} (ran {document.get('ran_at', '?')})"
    )
    return "\n".join(lines)


def _detail(check: dict[str, Any]) -> str:
    text = check.get("message", "")
    if check.get("fix") and check["status"] != "pass":
        text += f" Fix: {check['fix']}"
    return text


def _row(cells: tuple[str, ...], widths: list[int], detail_width: int) -> list[str]:
    fixed = "  ".join(cell.ljust(w) for cell, w in zip(cells[:4], widths, strict=True))
    detail = cells[4]
    chunks = textwrap.wrap(detail, detail_width, break_on_hyphens=False) or [""]
    pad = " " * (len(fixed) + 2)
    return [f"{fixed}  {chunks[0]}".rstrip()] + [f"{pad}{chunk}" for chunk in chunks[1:]]


# Concerns the page groups checks by, in reading order; unknown checks go to "Other".
CONCERNS = [
    ("Reachability from outside", {"reach", "listeners", "firewall"}),
    ("Postfix", {"postfix", "queue"}),
    ("Services", {"service", "dnsbl-cron"}),
    ("DKIM signing", {"dkim-sign"}),
    ("DNS records", {"spf", "fcrdns", "mx", "dkim", "dmarc", "dns"}),
    ("Blacklists", {"dnsbl"}),
]


def concern(check: dict[str, Any]) -> str:
    return next((title for title, names in CONCERNS if check.get("check") in names), "Other")


# Dark text on light tints, white text only on dark badges: every pair is WCAG AA (>= 4.5:1).
PAGE_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1d2330;background:#fff;
padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem} h2{font-size:1.15rem;margin:1.6rem 0 .2rem}
.meta{color:#4a5263;margin-bottom:1.25rem}
.verdict{display:inline-block;padding:.35rem .8rem;border-radius:.3rem;font-weight:700;color:#fff}
table{border-collapse:collapse;width:100%;margin-top:.4rem}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #dde1e8;vertical-align:top;color:#1d2330}
th{background:#f3f5f8;font-size:.85rem;text-transform:uppercase;letter-spacing:.03em}
.badge{font-weight:700;font-size:.8rem;padding:.15rem .45rem;border-radius:.25rem;color:#fff}
.badge.fail,.badge.error,.verdict.fail{background:#b71c1c} .badge.warn,.verdict.warn{background:#8a4b00}
.badge.pass,.verdict.pass{background:#1b5e20}
tr.fail td,tr.error td{background:#fdecec} tr.warn td{background:#fff6e5} tr.pass td{background:#fff}
.fix{margin-top:.3rem;font-family:ui-monospace,monospace;font-size:.85rem;white-space:pre-wrap}
.count{font-weight:400;color:#4a5263;font-size:.9rem}
"""


def render_html(document: dict[str, Any]) -> str:
    checks = ordered(document["checks"])
    tally = counts(checks)
    overall = verdict(checks)
    esc = html.escape
    titles = [title for title, _ in CONCERNS] + ["Other"]
    sections = []
    for title in titles:
        group = [c for c in checks if concern(c) == title]
        if not group:
            continue
        rows = []
        for c in group:
            fix = ""
            if c.get("fix") and c["status"] != "pass":
                fix = f'<div class="fix">Fix: {esc(c["fix"])}</div>'
            rows.append(
                f'<tr class="{c["status"]}" data-status="{c["status"]}">'
                f'<td><span class="badge {c["status"]}">{STATUS_LABEL[c["status"]]}</span></td>'
                f"<td>{esc(c.get('host', ''))}</td><td>{esc(c.get('check', ''))}</td>"
                f"<td>{esc(c.get('subject', ''))}</td><td>{esc(c.get('message', ''))}{fix}</td></tr>"
            )
        bad = sum(1 for c in group if c["status"] in ("fail", "error"))
        sections.append(
            f'<section data-concern="{esc(title)}"><h2>{esc(title)} '
            f'<span class="count">{len(group) - bad} of {len(group)} ok</span></h2>'
            "<table><thead><tr><th>Status</th><th>Host</th><th>Check</th><th>Subject</th>"
            "<th>What was found / what to fix</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table></section>"
        )
    summary = " · ".join(f"{n} {STATUS_LABEL[s].lower()}" for s, n in tally.items() if n)
    ran_at = esc(str(document.get("ran_at", "unknown time")))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>bulkrelay audit: {overall.upper()}</title><style>{PAGE_STYLE}</style></head><body>"
        f'<h1>bulkrelay audit</h1><div class="meta">ran {ran_at} · {summary or "no checks"}</div>'
        f'<span class="verdict {overall}" id="verdict">{overall.upper()}</span>'
        + "".join(sections)
        + "</body></html>\n"
    )


def write_html(document: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(document), encoding="utf-8")
    tmp.replace(path)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="print an audit JSON as a table and write the HTML page beside it",
        description="Render the audit playbook's JSON report for people: a terminal table and "
        "a self-contained HTML page (failures first, with what to fix).",
    )
    parser.add_argument("json_file", type=Path, help="audit JSON written by playbooks/audit.yml")
    parser.add_argument("--html", type=Path, help="where to write the page (default: beside the JSON)")
    parser.add_argument("--no-html", action="store_true", help="only print the table")
    parser.set_defaults(func=run)


def run(args) -> int:
    document = load(args.json_file)
    print(render_table(document))
    if not args.no_html:
        target = args.html or args.json_file.with_suffix(".html")
        try:
            write_html(document, target)
        except OSError as exc:
            raise UsageError(f"cannot write {target}: {exc}") from None
        print(f"HTML report: {target}", file=sys.stderr)
    return 1 if verdict(document["checks"]) == "fail" else 0
