"""VERP addresses: round trip, forged and foreign tokens ignored, case folding tolerated."""

from __future__ import annotations

import pytest

from bulkrelay import verp

KEY = b"k" * 32


def test_round_trip():
    address = verp.make_address("bounces", "bounce.example.test", 1234, KEY)
    assert address.startswith("bounces+r1234-")
    assert address.endswith("@bounce.example.test")
    assert verp.parse_address(address, KEY) == 1234


def test_large_ids_and_brackets_and_case():
    address = verp.make_address("Bounces", "Bounce.Example.TEST.", 987654321012, KEY)
    assert address == address.lower()
    assert verp.parse_address(f"<{address.upper()}>", KEY) == 987654321012
    assert verp.parse_address(f"  {address}  ", KEY, prefix="BOUNCES") == 987654321012


def test_forged_mac_is_ignored():
    address = verp.make_address("bounces", "bounce.example.test", 7, KEY)
    local, _, domain = address.partition("@")
    forged = local[:-1] + ("0" if local[-1] != "0" else "1") + "@" + domain
    assert verp.parse_address(forged, KEY) is None
    # the MAC of id 7 does not validate id 8
    other = address.replace("+r7-", "+r8-")
    assert verp.parse_address(other, KEY) is None


def test_other_key_prefix_or_shape_is_ignored():
    address = verp.make_address("bounces", "bounce.example.test", 42, KEY)
    assert verp.parse_address(address, b"x" * 32) is None
    assert verp.parse_address(address, KEY, prefix="returns") is None
    assert verp.parse_address(address, b"") is None
    for junk in [
        "",
        "bounces@bounce.example.test",
        "bounces+@x.test",
        "bounces+r0-000000000000@x.test",
        "bounces+r12-zzzzzzzzzzzz@x.test",
        "noatsign",
        None,
        "bounces+r12-abc@x.test",
    ]:
        assert verp.parse_address(junk, KEY) is None


def test_prefix_bound_into_mac():
    a = verp.make_address("returns", "bounce.example.test", 5, KEY)
    assert verp.parse_address(a, KEY, prefix="returns") == 5
    assert verp.parse_address(a.replace("returns+", "bounces+"), KEY) is None


def test_find_in_text():
    address = verp.make_address("bounces", "bounce.example.test", 99, KEY)
    fake = "bounces+r98-000000000000@bounce.example.test"
    text = f"Return-Path: <{fake}>\nX-Original-To: {address}\n"
    assert verp.find_in_text(text, KEY) == 99
    assert verp.find_in_text("nothing here", KEY) is None


@pytest.mark.parametrize(
    ("prefix", "domain", "rid", "key"),
    [
        ("bad prefix", "b.test", 1, KEY),
        ("bounces", "", 1, KEY),
        ("bounces", "b.test", 0, KEY),
        ("bounces", "b.test", -3, KEY),
        ("bounces", "b.test", 1, b""),
    ],
)
def test_bad_arguments_raise_valueerror(prefix, domain, rid, key):
    with pytest.raises(ValueError):
        verp.make_address(prefix, domain, rid, key)
