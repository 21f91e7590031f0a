#!/usr/bin/env python3
"""tests/integration/ws_client.py -- drives `kiln serve` over WebSocket the way ComfyUI's
websockets_api_example.py does: open /ws?clientId=ID, queue a prompt with that client_id, read
events until `executing` with node null for our prompt, then read /history/{id}.

Standard library only (CI's Debian python3 has no `websocket` module): the client side of
RFC 6455 -- handshake with Sec-WebSocket-Accept check, masked client frames, fragmented and
control frames -- is written out here. It is a test of the server, independent of CivetWeb.

usage: ws_client.py run HOST PORT CLIENT_ID BODY.json [HEADER:VALUE ...]
  Connects as CLIENT_ID and as a bystander client, negotiates feature flags, POSTs BODY (its
  client_id set to CLIENT_ID), waits (60 s at most) for the end of the prompt and prints one
  JSON object: prompt_id, first (the first message), feature_flags (the reply), events (our
  [type, data] in order), bystander (the types the other client saw), history (the entry).
usage: ws_client.py handshake HOST PORT [PATH]
  Only checks the 101 answer and the first status message (PATH default /ws); prints it.
"""
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.request

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


class WebSocket:
    def __init__(self, host, port, path, timeout=60.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: the first frame may follow at once
            c = self.sock.recv(1)
            if not c:
                raise RuntimeError(f"connection closed during the handshake: {head!r}")
            head += c
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise RuntimeError(f"handshake answered {lines[0]!r}, expected 101")
        fields = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if fields.get("sec-websocket-accept") != want:
            raise RuntimeError(f"bad Sec-WebSocket-Accept {fields.get('sec-websocket-accept')!r}, expected {want!r}")
        self.buf = b""

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_json(self, obj):
        self._send(0x1, json.dumps(obj).encode())

    def recv(self):
        """The next message: ("text", str) or ("binary", bytes); answers pings."""
        parts, kind = [], None
        while True:
            b0, b1 = self._read(2)
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if masked:
                raise RuntimeError("server frames must not be masked (RFC 6455 5.1)")
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode == 0xA:  # pong
                continue
            if opcode == 0x8:
                raise EOFError(f"server closed the socket: {payload!r}")
            if opcode in (0x1, 0x2):
                kind = "text" if opcode == 0x1 else "binary"
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return (kind, data.decode()) if kind == "text" else (kind, data)

    def recv_json(self, deadline):
        """The next text message as JSON (binary ones are returned as {"type": "<binary>"})."""
        self.sock.settimeout(max(0.01, deadline - time.time()))
        kind, data = self.recv()
        return json.loads(data) if kind == "text" else {"type": "<binary>", "data": len(data)}

    def close(self):
        try:
            self._send(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


def http_json(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def run(host, port, client_id, body_path, extra_headers):
    base = f"http://{host}:{port}"
    ws = WebSocket(host, port, f"/ws?clientId={client_id}")
    other = WebSocket(host, port, f"/ws?clientId={client_id}-bystander")
    t_end = time.time() + 60
    first = ws.recv_json(t_end)
    other.recv_json(t_end)

    ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    flags = None
    while flags is None:
        m = ws.recv_json(t_end)
        if m.get("type") == "feature_flags":
            flags = m.get("data")

    with open(body_path) as f:
        body = json.load(f)
    body["client_id"] = client_id
    headers = {"Content-Type": "application/json"}
    for h in extra_headers:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    ticket = http_json("POST", base + "/prompt", body, headers)
    prompt_id = ticket["prompt_id"]

    events = []
    while True:
        m = ws.recv_json(t_end)
        events.append([m.get("type"), m.get("data")])
        d = m.get("data") or {}
        if m.get("type") == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
            break

    seen = []  # what the bystander got meanwhile (it must not see our prompt's events)
    t_drain = time.time() + 0.5
    try:
        while time.time() < t_drain:
            seen.append(other.recv_json(t_drain).get("type"))
    except (socket.timeout, TimeoutError):
        pass

    history = http_json("GET", f"{base}/history/{prompt_id}")
    ws.close()
    other.close()
    print(json.dumps({"prompt_id": prompt_id, "ticket": ticket, "first": first, "feature_flags": flags,
                      "events": events, "bystander": seen, "history": history}))


def handshake(host, port, path="/ws"):
    ws = WebSocket(host, port, path)
    print(json.dumps(ws.recv_json(time.time() + 10)))
    ws.close()


def main(argv):
    if len(argv) >= 6 and argv[1] == "run":
        run(argv[2], int(argv[3]), argv[4], argv[5], argv[6:])
    elif len(argv) in (4, 5) and argv[1] == "handshake":
        handshake(argv[2], int(argv[3]), *argv[4:])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
