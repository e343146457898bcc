#!/usr/bin/env python3
"""Print the results in build/bench/*.json as Markdown: issue 16's table (each of its figures
with its target, PASS/MISS and the load the benchmark started at), the verdict table, and with
``--figures`` every figure of every benchmark (the tables in docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fmt(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


# Issue 16's table, row by row: (figure, target as the issue words it, the verdicts that decide
# it as (benchmark, verdict key)). A row passes when every verdict it names ran and passed; a
# row none of whose verdicts is in the results is "not run", never a pass.
ISSUE_16 = (
    ("intake, 200 KB with a PDF, 1 session, vs Postfix smtpd", ">= 1.0x", [("intake", "pdf.s1.ratio")]),
    (
        "intake, 5 KB, 1 / 4 sessions, vs Postfix smtpd",
        ">= 1.0x",
        [("intake", "small.s1.ratio"), ("intake", "small.s4.ratio")],
    ),
    (
        "drain into a real Postfix vs smtp-source, 5 KB / 200 KB",
        ">= 0.9x",
        [("drain", f"postfix.{kind}.c{conns}.ratio") for kind in ("small", "pdf") for conns in (1, 4)],
    ),
    (
        "drain into smtp-sink, 1 connection, 5 KB / 200 KB, vs smtp-source",
        ">= 1.0x",
        [("drain", "sink.small.c1.ratio"), ("drain", "sink.pdf.c1.ratio")],
    ),
    (
        "40 DNSBLs behind 100 ms: wall time vs the slowest single query (not listed / listed on 3)",
        "<= 1.3x",
        [("dnsbl", "checker_vs_slowest_query"), ("dnsbl_listed3", "checker_vs_slowest_query")],
    ),
    (
        "check_dnsbl vs Debian's check_rbl, default workers (not listed / listed on 3)",
        "<= 1.0x",
        [("dnsbl", "check_dnsbl_vs_check_rbl_20"), ("dnsbl_listed3", "check_dnsbl_vs_check_rbl_20")],
    ),
    (
        "check_dnsbl vs check_rbl --workers 40 (not listed / listed on 3)",
        "<= 1.0x",
        [("dnsbl", "check_dnsbl_vs_check_rbl_40"), ("dnsbl_listed3", "check_dnsbl_vs_check_rbl_40")],
    ),
    (
        "the same, check_dnsbl as a relay runs it (Debian's python3 and dnspython), 20 / 40 workers",
        "<= 1.0x",
        [
            (name, f"check_dnsbl_relay_vs_check_rbl_{workers}")
            for name in ("dnsbl", "dnsbl_listed3")
            for workers in (20, 40)
        ],
    ),
    ("`bulkrelay status` with 1M recipients queued", "< 150 ms", [("queue_scale", "status_at_full_ms")]),
    (
        "`site.yml` re-run with nothing to change",
        "changed=0; <= 0.5x today",
        # rerun_vs_base: this tree's re-run over main's before the change ("today"), same run
        [("playbook", "rerun_changed"), ("playbook", "rerun_vs_base")],
    ),
    (
        "service RSS with 1M recipients queued / while 200 KB messages arrive over 4 sessions",
        "< 150 MB",
        [("queue_scale", "service_peak_rss_mib"), ("intake", "pdf.s4.service_peak_rss_mib")],
    ),
)


def issue_table(runs: list[dict]) -> None:
    by_name = {data["benchmark"]: data for data in runs}
    print("\n| issue 16 figure | value | target | verdict | load at start |")
    print("| --- | --- | --- | --- | --- |")
    for figure, target, keys in ISSUE_16:
        values, loads, verdicts = [], [], []
        for benchmark, key in keys:
            data = by_name.get(benchmark, {})
            found = next((v for v in data.get("verdicts", []) if v["key"] == key), None)
            if found is None:
                values.append("not run")
                continue
            values.append(f"{found['value']:.3g}")
            verdicts.append(found["ok"])
            load = f"{data['machine']['load_at_start'][0]:g}"
            if load not in loads:
                loads.append(load)
        if not verdicts:
            verdict = "not run"
        elif all(verdicts) and len(verdicts) == len(keys):
            verdict = "PASS"
        else:
            verdict = "**MISS**" if not all(verdicts) else "incomplete"
        print(f"| {figure} | {' / '.join(values)} | {target} | {verdict} | {' / '.join(loads) or '-'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="build/bench")
    parser.add_argument("--figures", action="store_true", help="also every figure, per benchmark")
    args = parser.parse_args()
    files = sorted(Path(args.results).glob("*.json"))
    if not files:
        print(f"bench summary: no results in {args.results}", file=sys.stderr)
        return 1
    runs = [json.loads(path.read_text()) for path in files]
    issue_table(runs)
    print("\n| benchmark | figure | value | target | verdict |")
    print("| --- | --- | --- | --- | --- |")
    missed = 0
    for data in runs:
        for v in data["verdicts"]:
            missed += not v["ok"]
            verdict = "pass" if v["ok"] else "**MISS**"
            target = f"{v['op']} {v['target']:g}"
            print(f"| {data['benchmark']} | {v['key']} | {v['value']:.3f} | {target} | {verdict} |")
    print(f"\n{missed} target(s) missed.")
    if args.figures:
        for data in runs:
            load = data["machine"]["load_at_start"]
            print(f"\n#### {data['benchmark']}: {data['title']}")
            print(
                f"\n{data['started']} - {data['finished']}, load at start {load[0]} / {load[1]} / {load[2]}\n"
            )
            print("| figure | value | unit | note |")
            print("| --- | ---: | --- | --- |")
            for key, f in data["figures"].items():
                print(f"| {key} | {fmt(f['value'])} | {f['unit']} | {f['note']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
