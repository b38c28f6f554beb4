"""Tiny traffic tool run inside endpoints by tests and the demo (python -m apiary.testing.netprobe ...).

  serve-tcp PORT...         echo server on TCP ports (one line per accepted connection to stdout)
  serve-udp PORT            UDP echo server
  serve-http PORT           HTTP server answering 200 "ok"
  tcp HOST PORT [TIMEOUT]   connect, send, expect the echo; exit 0 on success, 1 on failure
  udp HOST PORT [TIMEOUT]   send a datagram, expect the echo
  http HOST PORT [TIMEOUT]  GET /, expect 200
  connect HOST PORT         one TCP connect; prints "connected" or "error <ERRNO-NAME>"
  hold HOST PORT SECONDS    keep one TCP connection and exchange a message every 0.1 s; prints ok/fail counts
  serve-id PORT NAME        TCP and UDP on PORT, each answering NAME (a backend saying who it is)
  serve-http11 PORT         HTTP/1.1 keep-alive server: any method, 200 "<METHOD> <path> from <peer>"
  requests HOST PORT JSON   [[METHOD, PATH, {headers}, body], ...] on ONE keep-alive connection; prints JSON
                            [[status, body], ...] and how many connections were used
  raw HOST PORT JSON        send the JSON string's bytes on one connection, read until the peer closes (or 5 s of
                            silence); prints the JSON string received
  ask HOST PORT N [udp]     N new connections (or UDP sockets) to HOST:PORT; prints JSON: the answers counted,
                            the peer each socket saw (getpeername / recvfrom), the errors counted
  loop OUT STOP SPEC...      until file STOP exists, one TCP connection to each SPEC (HOST:PORT:TIMEOUT) in turn,
                            reading what the server says; appends "<unix time> <SPEC> ok <answer>" or
                            "<unix time> <SPEC> fail <ERRNO-NAME>" to file OUT per attempt
Only ever used with addresses of endpoints and test hosts the caller created.
"""

from __future__ import annotations

import errno
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler  # the name `http` is the client command below

from apiary.connectivity.probe import serve_tcp, tcp  # shipped with the CLI (`apiary connectivity test`)


def serve_udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(4096)
        s.sendto(data, addr)


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a: object) -> None:
        pass


class _Any(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = f"{self.command} {self.path} from {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PUT = _any  # noqa: N815

    def log_message(self, *a: object) -> None:
        pass


def serve_http11(port: int) -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer(("0.0.0.0", port), _Any)
    srv.daemon_threads = True
    print("ready", flush=True)
    srv.serve_forever()


def requests(host: str, port: int, spec: str) -> None:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=10)
    out = []
    sockets = set()
    for method, path, headers, body in json.loads(spec):
        conn.request(method, path, body=body.encode() if body else None, headers=headers)
        sockets.add(id(conn.sock))
        r = conn.getresponse()
        out.append([r.status, r.read().decode(errors="replace")])
    print(json.dumps({"responses": out, "connections": len(sockets)}), flush=True)


def raw(host: str, port: int, data: str) -> None:
    got = b""
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(json.loads(data).encode())
        try:
            while chunk := c.recv(65536):
                got += chunk
        except OSError:
            pass
    print(json.dumps(got.decode(errors="replace")), flush=True)


def serve_http(port: int) -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer(("0.0.0.0", port), _Ok)
    print("ready", flush=True)
    srv.serve_forever()


def udp(host: str, port: int, timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"ping", (host, port))
            return s.recvfrom(16)[0] == b"ping"
        except OSError:
            return False


def http(host: str, port: int, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def hold(host: str, port: int, seconds: float) -> None:
    ok = fail = 0
    s = socket.create_connection((host, port), timeout=2)
    s.settimeout(1)
    print("connected", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            s.sendall(b"x")
            if s.recv(1) == b"x":
                ok += 1
            else:
                fail += 1
        except OSError:
            fail += 1
        time.sleep(0.1)
    print(f"ok={ok} fail={fail}", flush=True)


def serve_id(port: int, name: str) -> None:
    reply = name.encode()

    def tcp_loop() -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(256)
        while True:
            c, _ = s.accept()
            with c:
                c.sendall(reply)

    def udp_loop() -> None:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", port))
        while True:
            _, addr = u.recvfrom(64)
            u.sendto(reply, addr)

    threading.Thread(target=tcp_loop, daemon=True).start()
    threading.Thread(target=udp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def ask(host: str, port: int, n: int, udp: bool) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"answers": {}, "peers": {}, "errors": {}}

    def count(kind: str, key: str) -> None:
        out[kind][key] = out[kind].get(key, 0) + 1

    for _ in range(n):
        try:
            if udp:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.settimeout(2)
                    u.sendto(b"?", (host, port))
                    data, peer = u.recvfrom(64)
            else:
                with socket.create_connection((host, port), timeout=2) as c:
                    peer = c.getpeername()
                    data = c.recv(64)
            count("answers", data.decode())
            count("peers", f"{peer[0]}:{peer[1]}")
        except OSError as e:
            count("errors", errno.errorcode.get(e.errno or 0, type(e).__name__))
    print(json.dumps(out), flush=True)
    return out


def loop(out: str, stop: str, specs: list[str]) -> None:
    import os

    targets = [(h, int(p), float(t), spec) for spec in specs for h, p, t in [spec.split(":")]]
    with open(out, "a", buffering=1) as f:
        print("ready", flush=True)
        while not os.path.exists(stop):
            for host, port, timeout, spec in targets:
                try:
                    with socket.create_connection((host, port), timeout=timeout) as c:
                        line = f"ok {c.recv(64).decode() or '-'}"
                except OSError as e:
                    line = f"fail {errno.errorcode.get(e.errno or 0, type(e).__name__)}"
                f.write(f"{time.time():.3f} {spec} {line}\n")
            time.sleep(0.01)


def main(argv: list[str]) -> int:
    cmd, *rest = argv
    if cmd == "serve-tcp":
        serve_tcp([int(p) for p in rest])
    elif cmd == "serve-udp":
        serve_udp(int(rest[0]))
    elif cmd == "serve-http":
        serve_http(int(rest[0]))
    elif cmd == "serve-http11":
        serve_http11(int(rest[0]))
    elif cmd == "raw":
        raw(rest[0], int(rest[1]), rest[2])
    elif cmd == "requests":
        requests(rest[0], int(rest[1]), rest[2])
    elif cmd in ("tcp", "udp", "http"):
        timeout = float(rest[2]) if len(rest) > 2 else 1.5
        fn = {"tcp": tcp, "udp": udp, "http": http}[cmd]
        return 0 if fn(rest[0], int(rest[1]), timeout) else 1
    elif cmd == "connect":
        try:
            socket.create_connection((rest[0], int(rest[1])), timeout=2).close()
            print("connected")
        except OSError as e:
            print("error", errno.errorcode.get(e.errno or 0, str(e)))
    elif cmd == "serve-id":
        serve_id(int(rest[0]), rest[1])
    elif cmd == "ask":
        ask(rest[0], int(rest[1]), int(rest[2]), len(rest) > 3 and rest[3] == "udp")
    elif cmd == "loop":
        loop(rest[0], rest[1], rest[2:])
    elif cmd == "hold":
        hold(rest[0], int(rest[1]), float(rest[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
