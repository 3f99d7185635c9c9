"""A key set server on a real TCP socket (loopback, port 0) for the tests: it serves a JWKS,
answers with a redirect, or hangs (reads the request and never answers), and can be killed (the
port then refuses connections). It counts connections and answers."""

import json
import socket
import threading
import time

import jwt

from support import VECTORS


class KeySetServer:
    def __init__(self, keys=None):
        self.keys = keys if keys is not None else VECTORS["jwks"]["keys"]
        self.mode = "serve"  # or "hang", or "redirect"
        self.location = None
        self.connections = 0
        self.answered = 0
        self.hanging = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/.well-known/tenant-proxy/jwks.json"
        self._open = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # killed
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
        except OSError:
            return
        with self._lock:
            if self.mode == "hang":
                self.hanging.append(conn)
                return
            self.answered += 1
        self._answer(conn)

    def _answer(self, conn):
        try:
            if self.mode == "redirect":
                conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            else:
                body = json.dumps({"keys": self.keys}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: public, max-age=60\r\n"
                             + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass
        finally:
            conn.close()

    def answer_hanging(self):
        """Answers the hanging requests now (with the current mode's answer)."""
        with self._lock:
            pending, self.hanging = self.hanging, []
            self.answered += len(pending)
        for conn in pending:
            self._answer(conn)

    def release(self):
        """Drops the hanging connections: the fetch sees the connection reset."""
        with self._lock:
            pending, self.hanging = self.hanging, []
        for conn in pending:
            conn.close()

    def kill(self):
        """Stops listening and drops every connection: the port refuses from now on."""
        # shutdown() wakes the thread blocked in accept(); close() alone would leave the kernel's
        # listening socket alive (and accepting) until accept() returned.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            conns, self._open, self.hanging = self._open, [], []
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass
        self._thread.join(5)


def until(probe, what, timeout=10.0):
    """Polls ``probe`` (bounded) until it returns something true; never a fixed sleep."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def sign(now, key="es256", **over):
    """A descriptor signed with a fixture key (``attacker``: a key nobody trusts), valid for an hour from ``now``."""
    k = VECTORS["keys"][key]
    claims = {"v": 1, "iss": VECTORS["issuer"], "aud": VECTORS["audience"], "sub": "acme", "host": VECTORS["host"],
              "db": {"name": "acme_prod", "host": "db2.internal", "port": 5432}, "epoch": 2,
              "iat": int(now), "nbf": int(now), "exp": int(now) + 3600}
    claims.update(over)
    return jwt.encode(claims, k["private_pem"], algorithm="ES256", headers={"kid": k["kid"], "typ": "tenant-db+jwt"})
