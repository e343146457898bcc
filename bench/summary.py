#!/usr/bin/env python3
"""Print the results in build/bench/*.json as Markdown: the verdict table, and with
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
