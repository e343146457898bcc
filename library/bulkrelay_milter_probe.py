#!/usr/bin/python
# managed in the bulkrelay repository.
"""Ansible module: hand a test message to a running milter (OpenDKIM) and return it signed."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bulkrelay_milter_probe
short_description: Hand a test message to the running DKIM milter and return the headers it adds
description:
  - Speaks the milter protocol (version 6) to the socket Postfix uses, as Postfix would for a
    message from loopback, and returns the message with the headers the milter inserted.
  - Nothing is queued or sent, the message never reaches Postfix. Read-only; supports check mode.
  - Self-contained (standard library only), so it runs on the relay with its system Python.
version_added: "0.1.0"
author: bulkrelay
options:
  host:
    description: Milter address.
    type: str
    default: 127.0.0.1
  port:
    description: Milter TCP port (OpenDKIM of roles/relay_dkim listens on 8891).
    type: int
    default: 8891
  mail_from:
    description: Envelope sender and From header of the test message.
    type: str
    required: true
  helo:
    description: HELO name (the relay's name).
    type: str
    required: true
  timeout:
    description: Seconds allowed for the exchange.
    type: float
    default: 10
extends_documentation_fragment:
  - bulkrelay_read_only
"""

EXAMPLES = r"""
- name: OpenDKIM signs a test message
  bulkrelay_milter_probe:
    mail_from: audit@example.com
    helo: relay.example.com
"""

RETURN = r"""
state:
  description: signed (a DKIM-Signature was added), unsigned, refused, timeout or error.
  type: str
  returned: always
message:
  description: The test message with the inserted headers, CRLF line ends (empty unless signed).
  type: str
  returned: always
detail:
  description: What the milter answered, or the socket error.
  type: str
  returned: always
"""

import email.utils
import socket
import struct
import time

from ansible.module_utils.basic import AnsibleModule

ACTIONS = 0x1FF  # every modification a v6 MTA offers
PROTOCOL = 0x0FFFFF  # every no-send / no-reply step (not leading-space headers)
NO_SEND = {"C": 0x1, "H": 0x2, "M": 0x4, "R": 0x8, "B": 0x10, "L": 0x20, "N": 0x40, "T": 0x200}
NO_REPLY = {
    "L": 0x80,
    "C": 0x1000,
    "H": 0x2000,
    "M": 0x4000,
    "R": 0x8000,
    "T": 0x10000,
    "N": 0x40000,
    "B": 0x80000,
}


class MilterError(Exception):
    pass


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.flags = 0
        self.added = []

    def _read(self, size):
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise MilterError("the milter closed the connection")
            data += chunk
        return data

    def send(self, cmd, data=b""):
        self.sock.sendall(struct.pack("!I", len(data) + 1) + cmd.encode() + data)

    def reply(self):
        while True:
            (size,) = struct.unpack("!I", self._read(4))
            packet = self._read(size)
            code, data = chr(packet[0]), packet[1:]
            if code == "p":  # progress: keep waiting
                continue
            if code in ("h", "i"):  # add / insert header
                if code == "i":
                    data = data[4:]
                name, value = data.split(b"\0")[:2]
                self.added.append((name.decode(), value.decode()))
                continue
            if code in ("m", "e", "+", "-", "2", "b", "q"):  # other modifications: not expected here
                continue
            return code, data

    def step(self, cmd, data=b""):
        if self.flags & NO_SEND.get(cmd, 0):
            return
        self.send(cmd, data)
        if self.flags & NO_REPLY.get(cmd, 0):
            return
        code, data = self.reply()
        if code not in ("c", "a"):
            raise MilterError(f"the milter answered {code!r} {data[:200]!r} to {cmd!r}")


def probe(params):  # noqa: PLR0911 - one return per outcome
    sender = params["mail_from"]
    helo = params["helo"]
    headers = [
        ("From", f"bulkrelay audit <{sender}>"),
        ("To", sender),
        ("Subject", "bulkrelay audit: DKIM test signature (never sent)"),
        ("Date", email.utils.formatdate(time.time())),
        ("Message-ID", email.utils.make_msgid("audit", helo)),
    ]
    body = b"This message tests the DKIM milter. It is never queued or sent.\r\n"
    try:
        sock = socket.create_connection((params["host"], params["port"]), timeout=params["timeout"])
    except ConnectionRefusedError as exc:
        return {"state": "refused", "detail": str(exc)}
    except TimeoutError as exc:
        return {"state": "timeout", "detail": str(exc)}
    except OSError as exc:
        return {"state": "error", "detail": str(exc)}
    client = Client(sock)
    try:
        client.send("O", struct.pack("!III", 6, ACTIONS, PROTOCOL))
        code, data = client.reply()
        if code != "O" or len(data) < 12:
            raise MilterError(f"bad option negotiation answer {code!r}")
        client.flags = struct.unpack("!III", data[:12])[2]
        client.send("D", b"C" + b"j\0" + helo.encode() + b"\0{daemon_name}\0bulkrelay-audit\0")
        client.step("C", b"localhost\0" + b"4" + struct.pack("!H", 0) + b"127.0.0.1\0")
        client.step("H", helo.encode() + b"\0")
        client.send("D", b"M" + b"i\0AUDITPROBE\0")
        client.step("M", f"<{sender}>".encode() + b"\0")
        client.step("R", f"<{sender}>".encode() + b"\0")
        client.step("T")
        for name, value in headers:
            client.step("L", name.encode() + b"\0" + value.encode() + b"\0")
        client.step("N")
        client.step("B", body)
        client.send("E")
        code, data = client.reply()
        client.send("Q")
    except TimeoutError:
        return {"state": "timeout", "detail": "the milter did not answer in time"}
    except (OSError, MilterError, struct.error) as exc:
        return {"state": "error", "detail": str(exc)}
    finally:
        sock.close()
    if code not in ("c", "a"):
        return {"state": "error", "detail": f"end of message answered {code!r} {data[:200]!r}"}
    signatures = [(n, v) for n, v in client.added if n.lower() == "dkim-signature"]
    if not signatures:
        added = [n for n, _ in client.added]
        return {"state": "unsigned", "detail": f"the milter added {added} but no DKIM-Signature"}
    lines = [f"{n}: {v}" for n, v in signatures + headers]
    head = "\r\n".join(lines).replace("\n\t", "\r\n\t").replace("\r\r\n", "\r\n")
    message = head + "\r\n\r\n" + body.decode()
    return {"state": "signed", "message": message, "detail": f"signed with {len(signatures)} signature(s)"}


def main():
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "default": 8891},
            "mail_from": {"type": "str", "required": True},
            "helo": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 10},
        },
        supports_check_mode=True,
    )
    result = {"state": "error", "message": "", "detail": "", **probe(module.params)}
    result["socket"] = f"inet:{module.params['port']}@{module.params['host']}"
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
