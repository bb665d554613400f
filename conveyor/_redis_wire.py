"""Connections to Redis for the broker's hot path: one per thread, RESP2, whole
batches of commands per write.

Two kinds behind one interface (``exchange(commands) -> replies``):

- ``WireConnection``: a socket and hiredis's reply parser, nothing else. Used for
  ``redis://`` and ``rediss://`` when hiredis is installed (the ``redis`` extra
  brings it). It spares every worker process importing redis-py (about 70 ms and
  10 MiB each) and redis-py's per-command bookkeeping, which costs more than the
  loopback round trip itself.
- ``ClientConnection``: a redis-py connection, for Sentinel URLs, redis-py options
  this module does not know, or no hiredis.

Replies come back raw (bytes, ints, lists, None); an error reply is a
``ReplyError`` *in* the list, not raised, so a pipeline's other replies stay
readable. Connection failures raise ``WireError``.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

try:
    import hiredis

    HAVE_HIREDIS = True
except ImportError:  # pragma: no cover - the redis extra installs it
    HAVE_HIREDIS = False

DEFAULT_PORT = 6379
# URL options WireConnection understands; any other sends the URL to redis-py.
WIRE_OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
    }
)


class ReplyError(Exception):
    """An error reply from Redis; the connection is still usable."""


class WireError(Exception):
    """The connection failed (refused, reset, timed out, closed)."""


def is_error(reply: Any) -> bool:
    return isinstance(reply, Exception)


def is_noscript(reply: Any) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT")


class WireConnection:
    """One TCP (or TLS) connection speaking RESP2 through hiredis."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.pid = os.getpid()
        self.loaded: set[str] = set()  # script SHAs this server is known to hold
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def connect(self) -> None:
        if self._sock is not None:
            return
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise WireError(f"Error connecting to {where}: {exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
                sock.settimeout(self.socket_timeout)
            else:
                _set_kernel_timeout(sock, self.socket_timeout)
        except OSError as exc:  # ssl.SSLError included
            sock.close()
            raise WireError(f"Error connecting to {where}: {exc}") from None
        self._sock = sock
        self._reader = hiredis.Reader(replyError=ReplyError)
        self.loaded = set()  # a new connection may reach a restarted, empty server
        handshake: list[tuple[Any, ...]] = []
        if self.password is not None:
            handshake.append(
                ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            )
        if self.db:
            handshake.append(("SELECT", self.db))
        if handshake:
            for reply in self.exchange(handshake):
                if is_error(reply):
                    self.disconnect()
                    raise WireError(f"Redis at {where} refused the connection: {reply}")

    def exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send all commands in one write, then read one reply per command."""
        if self._sock is None:
            self.connect()
        sock, reader = self._sock, self._reader
        assert sock is not None
        try:
            if len(commands) == 1:
                sock.sendall(hiredis.pack_command(commands[0]))
            else:
                sock.sendall(b"".join([hiredis.pack_command(args) for args in commands]))
            replies: list[Any] = []
            wanted = len(commands)
            while len(replies) < wanted:
                reply = reader.gets()
                if reply is False:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise WireError(f"Connection closed by Redis at {self.host}:{self.port}")
                    reader.feed(chunk)
                    continue
                replies.append(reply)
            return replies
        except WireError:
            self.disconnect()
            raise
        except (TimeoutError, BlockingIOError):  # BlockingIOError: the kernel's SO_RCVTIMEO
            self.disconnect()
            raise WireError(f"Timeout reading from {self.host}:{self.port}") from None
        except (OSError, hiredis.ProtocolError) as exc:
            self.disconnect()
            raise WireError(f"Error talking to {self.host}:{self.port}: {exc}") from None
        except BaseException:
            # Interrupted mid-command (a signal's exception: soft time limit, terminate,
            # Ctrl-C): replies still due would be read as the next command's. Drop it.
            self.disconnect()
            raise

    def disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if os.getpid() == self.pid:  # never shut down a socket a forked parent still uses
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            sock.close()
        except OSError:
            pass

    def __del__(self) -> None:
        try:
            self.disconnect()
        except Exception:  # interpreter shutdown
            return


def _set_kernel_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Time out in the kernel (SO_RCVTIMEO/SO_SNDTIMEO) on a blocking socket.

    Python's own socket timeout polls before every send and receive: two more system
    calls per round trip, measured at 3-4 us of a 30 us loopback exchange. Linux
    only (the timeval layout is known there); elsewhere Python's timeout it is.
    """
    if seconds is None or not sys.platform.startswith("linux"):
        sock.settimeout(seconds)
        return
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class ClientConnection:
    """The same interface over one redis-py connection (Sentinel, unusual options)."""

    def __init__(self, client: Any) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        pool = client.connection_pool
        # Made like the pool's (same options, Sentinel-aware) but not owned by it: a
        # thread that ends takes its connection with it instead of leaving it in the
        # pool's in-use set.
        self.conn = pool.connection_class(**pool.connection_kwargs)
        self.pid = os.getpid()
        self.loaded: set[str] = set()
        self.conn.register_connect_callback(self._reset)
        self._response_error = ResponseError
        self._noscript = NoScriptError
        self._failures = (RedisConnectionError, RedisTimeoutError, OSError)

    def _reset(self, connection: Any) -> None:
        self.loaded = set()

    def connect(self) -> None:
        try:
            self.conn.connect()
        except self._failures as exc:
            raise WireError(str(exc)) from None

    def exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        conn = self.conn
        replies: list[Any] = []
        try:
            # connect() first, never send_packed_command's own connect: that one skips
            # Sentinel's (it dials conn.host:conn.port, which is localhost:6379 before
            # the first connect and the dead master after a failover). No-op when connected.
            conn.connect()
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except self._response_error as exc:  # still in step
                    replies.append(self._reply(exc))
        except self._failures as exc:
            self.disconnect()
            raise WireError(str(exc)) from None
        except BaseException:  # interrupted mid-command: see WireConnection.exchange
            self.disconnect()
            raise
        return self._deep(replies)

    def _reply(self, exc: Exception) -> ReplyError:
        # redis-py strips the error code into the exception type; put it back.
        return ReplyError(f"NOSCRIPT {exc}" if isinstance(exc, self._noscript) else str(exc))

    def _deep(self, replies: list[Any]) -> list[Any]:
        # EXEC replies hold errors inside the array: the same conversion there.
        return [
            self._deep(r)
            if isinstance(r, list)
            else self._reply(r)
            if isinstance(r, self._response_error)
            else r
            for r in replies
        ]

    def disconnect(self) -> None:
        try:
            self.conn.disconnect()  # redis-py only shuts down its own process's sockets
        except Exception:
            return


def tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """An SSL context from redis-py-style URL options (``ssl_cert_reqs``, ``ssl_ca_certs``...)."""
    import ssl  # here, not at the top: loading OpenSSL costs every process ~6 MiB, TLS or not

    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs") or None)
    reqs = (options.get("ssl_cert_reqs") or "required").lower()
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif reqs == "optional":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_OPTIONAL
    if options.get("ssl_check_hostname", "").lower() in ("false", "0", "no"):
        context.check_hostname = False
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile") or None)
    return context
