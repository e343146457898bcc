#!/usr/bin/env python3
"""Print every verdict from build/bench/*.json as one Markdown table (pasted into docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "build/bench")
    files = sorted(results.glob("*.json"))
    if not files:
        print(f"bench summary: no results in {results}", file=sys.stderr)
        return 1
    print("\n| benchmark | figure | value | target | verdict |")
    print("| --- | --- | --- | --- | --- |")
    missed = 0
    for path in files:
        data = json.loads(path.read_text())
        for v in data["verdicts"]:
            missed += not v["ok"]
            verdict = "pass" if v["ok"] else "**MISS**"
            target = f"{v['op']} {v['target']:g}"
            print(f"| {data['benchmark']} | {v['key']} | {v['value']:.3f} | {target} | {verdict} |")
    print(f"\n{missed} target(s) missed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
