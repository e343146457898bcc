"""Real-world bounces: the corpus that flufl.bounce ships (Mailman's samples from many MTAs).

The corpus is not copied into this tree: the flufl.bounce sdist is fetched from PyPI at test
time (the version Debian 12 ships, which the relays run) and its truth is read from
``flufl/bounce/testing/helpers.py`` (``DATA``: detector, file, failed addresses, temporary?).

Counted per message (109 = 98 permanent + 11 temporary; files whose entries name no address
are not counted), and printed whether the test passes or not:

* permanent found: every address DATA names is among the failures ``analyse`` reports (as
  the failed address, or as the RFC 3464 Original-Recipient: the address we mailed);
* temporary called hard: any address DATA names is reported as a hard failure (must be 0);
* human: the message would be treated as a person's reply (must be 0).

Run alone: ``scripts/pytest.sh tests/test_bounce_corpus_realworld.py -q``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from bulkrelay.bounces.parse import analyse

FLUFL = "flufl.bounce==4.0"
TRUTH = "flufl/bounce/testing/helpers.py"
DATA_DIR = "flufl/bounce/tests/data"
PERMANENT_FOUND_AT_LEAST = 97


@dataclass
class Case:
    filename: str
    addresses: set[str]
    temporary: bool


def read_truth(sdist: dict[str, bytes]) -> list[Case]:
    """DATA, merged per file (groupwise_02.txt appears twice), without address-less entries."""
    tree = ast.parse(sdist[TRUTH].decode("utf-8"))
    data = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DATA" for t in node.targets)
    )
    cases: dict[str, Case] = {}
    for entry in data:
        filename, addresses = entry[1], {a.decode().lower() for a in entry[2]}
        temporary = len(entry) == 4 and bool(entry[3])
        case = cases.setdefault(filename, Case(filename, set(), temporary))
        case.addresses |= addresses
    return [c for c in cases.values() if c.addresses]


def test_real_world_corpus(pypi_sdist, capsys):
    sdist = pypi_sdist(FLUFL)
    cases = read_truth(sdist)
    permanent = [c for c in cases if not c.temporary]
    temporary = [c for c in cases if c.temporary]
    missed, temporary_hard, human, permanent_hard = [], [], [], 0
    for case in cases:
        result = analyse(sdist[f"{DATA_DIR}/{case.filename}"])
        found = {a.lower(): f.kind for f in result.failures for a in (f.address, f.original) if a}
        if result.category == "human":
            human.append(case.filename)
        if case.temporary:
            if any(found.get(a) == "hard" for a in case.addresses):
                temporary_hard.append(case.filename)
        elif not case.addresses <= set(found):
            missed.append(case.filename)
        else:
            permanent_hard += all(found[a] == "hard" for a in case.addresses)
    report = (
        f"real-world bounce corpus ({FLUFL} sdist, {len(cases)} messages): "
        f"permanent found {len(permanent) - len(missed)}/{len(permanent)} "
        f"({permanent_hard} hard, the rest soft: full mailboxes, policy, no clear words), "
        f"temporary called hard {len(temporary_hard)}/{len(temporary)}, "
        f"called human {len(human)}/{len(cases)}"
    )
    with capsys.disabled():
        print(f"\n{report}\n  missed: {missed}\n  temporary hard: {temporary_hard}\n  human: {human}")
    assert (len(permanent), len(temporary)) == (98, 11), "the corpus changed: " + report
    assert len(permanent) - len(missed) >= PERMANENT_FOUND_AT_LEAST, report
    assert not temporary_hard, report
    assert not human, report
