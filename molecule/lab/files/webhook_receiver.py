"""The lab's webhook receiver: what an ERP would run to hear about its invoices.

A small HTTPS server (stdlib only; it does not import bulkrelay, so it checks the documented
format, not the sender's own code). For each POST it verifies the signature header

    X-Bulkrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, b"<t>." + body)>

refuses a bad signature or a timestamp more than --window seconds from its clock (401), and
appends every event of an accepted request to a JSONL file, one event a line, before it
answers 200. Delivery is at least once, so the file may hold an event twice: a receiver
de-duplicates on the event's "id".

    python3 webhook_receiver.py --listen 0.0.0.0:8443 --cert C --key K --secret-file S --out F
"""

import argparse
import hashlib
import hmac
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 10 * 1024 * 1024


def signature_ok(header, body, secret, now, window):
    """True when one v1 value of ``header`` signs ``body`` with ``secret`` and its t is fresh."""
    fields = [part.strip().partition("=") for part in (header or "").split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    signatures = [value for key, _, value in fields if key == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > window:
        return False
    expected = hmac.new(secret, stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


class Receiver(BaseHTTPRequestHandler):
    server_version = "lab-webhook-receiver"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.answer(413, "body too large")
        body = self.rfile.read(length)
        config, signature = self.server.config, self.headers.get("X-Bulkrelay-Signature")
        if not signature_ok(signature, body, config.secret, time.time(), config.window):
            return self.answer(401, "bad signature or timestamp outside the replay window")
        try:
            events = json.loads(body)["events"]
            lines = "".join(json.dumps(event, sort_keys=True) + "\n" for event in events)
        except (ValueError, KeyError, TypeError):
            return self.answer(400, 'body is not {"events": [...]}')
        with self.server.lock, open(config.out, "a", encoding="utf-8") as out:
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())  # on disk before the 200: an acknowledged event is never lost
        return self.answer(200, f"recorded {len(events)} events")

    def answer(self, status, text):
        payload = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        webhook = self.headers.get("X-Bulkrelay-Webhook", "-")
        print(f"status={status} webhook={webhook} client={self.client_address[0]} {text}", flush=True)

    def log_message(self, format, *args):
        """Silenced: answer() logs one line per request, with its outcome."""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--out", required=True, help="JSONL file the accepted events are appended to")
    parser.add_argument("--window", type=int, default=300, help="replay window, seconds")
    config = parser.parse_args()
    with open(config.secret_file, "rb") as f:
        config.secret = f.read().strip()
    host, port = config.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Receiver)
    server.config, server.lock = config, threading.Lock()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(config.cert, config.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    print(f"listening on https://{config.listen}, events to {config.out}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
