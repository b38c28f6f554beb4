"""The traffic tool `apiary connectivity test` runs inside its endpoints (python -m apiary.connectivity.probe).

  serve-tcp PORT...          TCP echo server on each port (prints "ready" once listening)
  tcp HOST PORT [TIMEOUT]    connect, send, expect the echo; prints "ok" (exit 0) or "error REASON" (exit 1)
  serve-http PORT            HTTP/1.1 server: 200 "ok METHOD PATH" for any GET (prints "ready" once listening)
  http HOST PORT PATH [TIMEOUT]  GET http://HOST:PORT/PATH; prints the JSON {"status": N, "body": "..."} (exit 0)
                             or "error REASON" (exit 1) when no HTTP answer came back

Only ever pointed at addresses of endpoints, services and the node the connectivity test itself set up.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_tcp(ports: list[int], host: str = "0.0.0.0") -> None:
    """Echo every connection on each port, for ever (threads; the caller's process is the server)."""

    def loop(s: socket.socket) -> None:
        while True:
            c, _ = s.accept()
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    def echo(c: socket.socket) -> None:
        with c:
            while data := c.recv(4096):
                c.sendall(data)

    for p in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, p))
        s.listen(64)
        threading.Thread(target=loop, args=(s,), daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"ok {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def serve_http(port: int, host: str = "0.0.0.0") -> None:
    srv = ThreadingHTTPServer((host, port), _Ok)
    srv.daemon_threads = True
    print("ready", flush=True)
    srv.serve_forever()


def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str] | str:
    """(status, body) of GET http://host:port/path, or why no HTTP answer came back."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read(4096).decode(errors="replace")
    except TimeoutError:
        return f"timed out after {timeout:g} s"
    except http.client.HTTPException as e:
        return f"no HTTP answer ({type(e).__name__})"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    finally:
        conn.close()


def tcp_reason(host: str, port: int, timeout: float) -> str | None:
    """None when a connection to host:port echoes "ping" back; else why not (errno name or what came back)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"ping")
            got = s.recv(4)
            return None if got == b"ping" else f"echo mismatch: got {got!r}"
    except TimeoutError:
        return f"timed out after {timeout:g} s"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))


def tcp(host: str, port: int, timeout: float) -> bool:
    return tcp_reason(host, port, timeout) is None


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve-tcp":
        serve_tcp([int(p) for p in argv[1:]])
    elif len(argv) == 2 and argv[0] == "serve-http":
        serve_http(int(argv[1]))
    elif len(argv) in (4, 5) and argv[0] == "http":
        got = http_get(argv[1], int(argv[2]), argv[3], float(argv[4]) if len(argv) > 4 else 2.0)
        if isinstance(got, str):
            print(f"error {got}", flush=True)
            return 1
        print(json.dumps({"status": got[0], "body": got[1]}), flush=True)
        return 0
    elif len(argv) in (3, 4) and argv[0] == "tcp":
        why = tcp_reason(argv[1], int(argv[2]), float(argv[3]) if len(argv) > 3 else 2.0)
        print("ok" if why is None else f"error {why}", flush=True)
        return 0 if why is None else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
