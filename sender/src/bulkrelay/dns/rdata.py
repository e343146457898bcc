"""Record data shared by the SPF helpers and the record generator: TXT strings in zone-file
presentation, and the error for inputs that cannot give correct records."""

from __future__ import annotations

TXT_STRING_MAX = 255


class RecordError(ValueError):
    """Inputs that cannot give correct records (message names the variable to fix)."""


def split_txt(value: str, size: int = TXT_STRING_MAX) -> list[str]:
    """Split a TXT value into character-strings of at most ``size`` bytes (RFC 1035 3.3.14).

    Splits on UTF-8 byte boundaries without cutting a character in two.
    """
    data = value.encode("utf-8")
    parts: list[str] = []
    while data:
        cut = min(size, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # do not split a UTF-8 sequence
            cut -= 1
        parts.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    return parts or [""]


def quote_txt(value: str) -> str:
    """Zone-file presentation of a TXT value: quoted 255-byte strings separated by spaces."""
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in split_txt(value))
