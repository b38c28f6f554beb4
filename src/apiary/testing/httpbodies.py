"""HTTP/1.1 bodies through a proxy, on raw sockets (python -m apiary.testing.httpbodies ...): a server and a
client that tell whether a proxy streams request and response bodies or holds them whole, and a backend
that resets. The two coordinate through files in DIR (they run in two endpoints of one host).

  serve PORT DIR           POST /…/upload  reads a chunked (or Content-Length) body; touches DIR/first-chunk
                                           once the first body bytes arrived; answers 200 "<bytes> <sha256>"
                           GET /…/download?n=N  answers 200 chunked: 64 KiB, then waits (up to 30 s) for
                                           DIR/go, then the rest of N bytes of :func:`pattern`
                           GET /…/reset    reads the request and resets the connection (RST, no response)
                           anything else   200 "ok"
  upload HOST PORT DIR PATH N [WAIT]  POSTs N bytes, chunked: headers and the first 4 KiB chunk, then waits
                           (up to WAIT s, 15 by default) for DIR/first-chunk before the rest; prints JSON
                           {first_chunk_seen_early, status, body, expected}
  download HOST PORT DIR PATH N  GETs PATH?n=N; reads until the first body bytes, then touches DIR/go and
                           reads the rest; prints JSON {first_bytes_early, status, length, sha256_ok}
  get HOST PORT PATH       one GET on a new connection; prints JSON {status, error}
  keep HOST PORT DIR PATH...  GETs each PATH on one keep-alive connection; before each after the first it
                           touches DIR/ready-<i> and waits (up to 30 s) for DIR/go-<i>; prints JSON
                           {statuses, error} (a status is null once the connection was closed)
  hammer HOST PORT SECONDS CONNS PATH  GETs PATH in a loop on CONNS keep-alive connections (a thread each) for
                           SECONDS; prints JSON {requests, statuses: {code: n}, closed} (closed: connections
                           the other end closed or reset; each is reopened)
Only ever used with addresses of endpoints the caller created.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import struct
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

FIRST = 64 << 10
CHUNK = 256 << 10


def pattern(n: int) -> bytes:
    """N bytes that are not all alike (so a reordering or a lost chunk changes the hash)."""
    block = bytes(range(256)) * 16  # 4 KiB
    reps = n // len(block) + 1
    return (block * reps)[:n]


KEEP_GO_WAIT_S = 900.0  # keep(): how long a request waits for the test's go (the test's own timeouts end it sooner)


def _wait_for(path: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method, target, _version = line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            path, _, query = target.partition("?")
            if path.endswith("/reset"):
                self._body(headers)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return  # closed with the linger of 0: an RST
            if path.endswith("/upload"):
                n, digest = self._body(headers, self.server.dir + "/first-chunk")
                self._send(200, f"{n} {digest}".encode())
            elif path.endswith("/download"):
                self._body(headers)
                self._download(int(query.partition("n=")[2] or 0))
            else:
                self._body(headers)
                self._send(200, b"ok")
            if headers.get("connection", "").lower() == "close":
                return

    def _body(self, headers: dict[str, str], first: str | None = None) -> tuple[int, str]:
        h = hashlib.sha256()
        n = 0

        def got(data: bytes) -> None:
            nonlocal n
            if data and n == 0 and first:
                _touch(first)
            n += len(data)
            h.update(data)

        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                while size:
                    data = self.rfile.read1(min(size, 65536))
                    if not data:
                        return n, h.hexdigest()
                    got(data)
                    size -= len(data)
                self.rfile.readline()  # the chunk's CRLF
        else:
            left = int(headers.get("content-length", "0") or 0)
            while left:
                data = self.rfile.read1(min(left, 65536))
                if not data:
                    break
                got(data)
                left -= len(data)
        return n, h.hexdigest()

    def _send(self, status: int, body: bytes) -> None:
        self.wfile.write(f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        self.wfile.flush()

    def _download(self, n: int) -> None:
        data = pattern(n)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        first = data[:FIRST]
        self.wfile.write(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        self.wfile.flush()
        _wait_for(self.server.dir + "/go", 30)
        for i in range(FIRST, n, CHUNK):
            part = data[i:i + CHUNK]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, directory: str) -> None:
        super().__init__(("0.0.0.0", port), _Handler)
        self.dir = directory


def serve(port: int, directory: str) -> None:
    srv = _Server(port, directory)
    print("ready", flush=True)
    srv.serve_forever()


def _response(f: BinaryIO) -> tuple[int, dict[str, str]]:
    status_line = f.readline()
    if not status_line:
        raise ConnectionError("closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (h := f.readline()) not in (b"\r\n", b"\n", b""):
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def _read_body(f: BinaryIO, headers: dict[str, str], on_first: Callable[[], None] | None = None) -> bytes:
    out = bytearray()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            data = f.read(size)
            if not out and on_first is not None:
                on_first()
            out += data
            f.readline()
    n = int(headers.get("content-length", "0") or 0)
    return bytes(f.read(n))


def upload(host: str, port: int, directory: str, path: str, n: int, wait: float = 15) -> None:
    data = pattern(n)
    with socket.create_connection((host, port), timeout=30) as c:
        head = f"POST {path} HTTP/1.1\r\nHost: bodies\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        first = data[:4096]
        c.sendall(head + f"{len(first):x}\r\n".encode() + first + b"\r\n")
        early = _wait_for(directory + "/first-chunk", wait)
        try:
            for i in range(4096, n, CHUNK):
                part = data[i:i + CHUNK]
                c.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            c.sendall(b"0\r\n\r\n")
        except OSError:  # the peer answered early and closed (a 403): its answer is still to be read
            pass
        f = c.makefile("rb")
        status, headers = _response(f)
        body = _read_body(f, headers).decode(errors="replace")
    print(json.dumps({"first_chunk_seen_early": early, "status": status, "body": body,
                      "expected": f"{n} {hashlib.sha256(data).hexdigest()}"}), flush=True)


def download(host: str, port: int, directory: str, path: str, n: int) -> None:
    early = False

    def first() -> None:
        nonlocal early
        early = not os.path.exists(directory + "/go")  # the server holds the rest until DIR/go exists
        _touch(directory + "/go")

    with socket.create_connection((host, port), timeout=60) as c:
        c.sendall(f"GET {path}?n={n} HTTP/1.1\r\nHost: bodies\r\n\r\n".encode())
        f = c.makefile("rb")
        status, headers = _response(f)
        body = _read_body(f, headers, first)
    print(json.dumps({"first_bytes_early": early, "status": status, "length": len(body),
                      "sha256_ok": hashlib.sha256(body).digest() == hashlib.sha256(pattern(n)).digest()}),
          flush=True)


def get(host: str, port: int, path: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=10) as c:
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: bodies\r\nConnection: close\r\n\r\n".encode())
            f = c.makefile("rb")
            status, headers = _response(f)
            _read_body(f, headers)
        print(json.dumps({"status": status, "error": None}), flush=True)
    except OSError as e:
        print(json.dumps({"status": None, "error": type(e).__name__}), flush=True)


def keep(host: str, port: int, directory: str, paths: list[str]) -> None:
    statuses: list[int | None] = []
    error = None
    with socket.create_connection((host, port), timeout=10) as c:
        f = c.makefile("rb")
        for i, path in enumerate(paths):
            if i:
                _touch(os.path.join(directory, f"ready-{i}"))
                # the test applies a policy in between: never send before it says so (under QEMU/TCG an
                # apply takes longer than 30 s, and a request sent early was judged by the rules before it)
                if not _wait_for(os.path.join(directory, f"go-{i}"), KEEP_GO_WAIT_S):
                    raise SystemExit(f"keep: go-{i} did not come within {KEEP_GO_WAIT_S:.0f} s")
            try:
                c.sendall(f"GET {path} HTTP/1.1\r\nHost: bodies\r\n\r\n".encode())
                status, headers = _response(f)
                _read_body(f, headers)
                statuses.append(status)
            except (OSError, ValueError) as e:  # closed by the proxy: no status line
                statuses.append(None)
                error = error or type(e).__name__
    print(json.dumps({"statuses": statuses, "error": error}), flush=True)


def hammer(host: str, port: int, seconds: float, conns: int, path: str) -> None:
    import threading  # noqa: PLC0415

    lock = threading.Lock()
    totals: dict[str, int] = {}
    closed = requests = 0
    end = time.monotonic() + seconds

    def one() -> None:
        nonlocal closed, requests
        c = socket.create_connection((host, port), timeout=10)
        f = c.makefile("rb")
        while time.monotonic() < end:
            try:
                c.sendall(f"GET {path} HTTP/1.1\r\nHost: bodies\r\n\r\n".encode())
                status, headers = _response(f)
                _read_body(f, headers)
            except (OSError, ValueError):
                with lock:
                    closed += 1
                c.close()
                c = socket.create_connection((host, port), timeout=10)
                f = c.makefile("rb")
                continue
            with lock:
                requests += 1
                totals[str(status)] = totals.get(str(status), 0) + 1
        c.close()

    threads = [threading.Thread(target=one) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"requests": requests, "statuses": totals, "closed": closed}), flush=True)


def main(argv: list[str]) -> int:
    cmd, *rest = argv
    if cmd == "serve":
        serve(int(rest[0]), rest[1])
    elif cmd == "upload":
        upload(rest[0], int(rest[1]), rest[2], rest[3], int(rest[4]), *(float(w) for w in rest[5:6]))
    elif cmd == "download":
        download(rest[0], int(rest[1]), rest[2], rest[3], int(rest[4]))
    elif cmd == "get":
        get(rest[0], int(rest[1]), rest[2])
    elif cmd == "hammer":
        hammer(rest[0], int(rest[1]), float(rest[2]), int(rest[3]), rest[4])
    elif cmd == "keep":
        keep(rest[0], int(rest[1]), rest[2], rest[3:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
