"""One thread's connection to Redis: a redis-py connection on which whole batches of
commands go out in one write and the raw RESP2 replies come back, an error reply
kept in place among them (so a batch's other replies stay readable) and a failed
connection raised as ``ConnectionLost``.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis


class ConnectionLost(Exception):
    """The connection failed (refused, reset, timed out, closed): nothing more is
    known of the commands in flight."""


def is_error(reply: Any) -> bool:
    """An error reply, left in a batch's replies (the connection is still in step)."""
    return isinstance(reply, Exception)


def is_noscript(reply: Any) -> bool:
    return isinstance(reply, Exception) and isinstance(reply, _noscript_error())


@functools.cache
def _noscript_error() -> type[Exception]:
    from redis.exceptions import NoScriptError

    return NoScriptError


def client_name() -> str:
    """What ``CLIENT LIST`` shows for this process's connections: host and pid."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return f"conveyor:{host}:{os.getpid()}"


@functools.cache
def connection_class(base: type[Any]) -> type[Any]:
    """redis-py's plain TCP connection with its timeouts kept by the kernel.

    Python's own socket timeout polls before every send and receive: two more system
    calls per round trip, a tenth of a loopback exchange. A blocking socket with
    SO_RCVTIMEO/SO_SNDTIMEO times out the same, and redis-py reports it as a lost
    connection. Linux's timeval layout only; TLS, Unix sockets and Sentinel's
    connections keep redis-py's way.
    """
    import redis

    if base is not redis.Connection or not sys.platform.startswith("linux"):
        return base

    class KernelTimeoutConnection(base):  # type: ignore[misc]
        def _connect(self) -> socket.socket:
            sock: socket.socket = super()._connect()
            seconds = self.socket_timeout
            if seconds is not None:
                whole = int(seconds)
                timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
                sock.settimeout(None)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            return sock

    return KernelTimeoutConnection


def _hiredis_packer() -> Callable[[Sequence[tuple[Any, ...]]], list[bytes]] | None:
    """Whole batches packed by hiredis in C; redis-py's own packer encodes each argument
    in Python, which costs more than the loopback round trip for a settle batch."""
    try:
        from hiredis import pack_command
    except ImportError:  # pragma: no cover - the redis extra installs it
        return None

    def pack(commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
        # One buffer, one sendall(): redis-py sends a list's items one by one.
        if len(commands) == 1:
            return [pack_command(commands[0])]
        return [b"".join([pack_command(args) for args in commands])]

    return pack


class Connection:
    """One thread's redis-py connection: whole batches per write, raw replies.

    Made like the client's pool makes its own (same class and options, so TLS,
    AUTH/ACL and Sentinel work as redis-py does them) but owned by the thread, not
    by the pool: a thread that ends takes its connection with it instead of leaving
    it in the pool's in-use set. An error reply stays *in* the replies, so a batch's
    other replies remain readable; a failed connection raises ``ConnectionLost``.
    """

    def __init__(self, client: redis.Redis, name: str) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs.setdefault("client_name", name)
        self.conn: Any = connection_class(pool.connection_class)(**kwargs)
        self.pid = os.getpid()
        self.loaded: set[str] = set()  # script SHAs this server is known to hold
        # Kept by RedisLink: batches sent whose replies are still to be read, oldest
        # first, and batches whose replies said they failed, to be sent again.
        self.owed: list[Any] = []
        self.failed: list[Any] = []
        # Known connected: connect() is skipped then (redis-py's runs its retry wrapper).
        self._live = False
        self.conn.register_connect_callback(self._reset)
        self._response_error = ResponseError
        self._failures = (RedisConnectionError, RedisTimeoutError, OSError)
        self._pack: Callable[[Sequence[tuple[Any, ...]]], Any] = _hiredis_packer() or self.conn.pack_commands

    def _reset(self, connection: Any) -> None:
        self.loaded = set()  # a new connection may reach a restarted, empty server
        self._live = True

    def connect(self) -> None:
        if self._live:
            return
        try:
            self.conn.connect()
        except self._failures as exc:
            raise ConnectionLost(str(exc)) from None

    def exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send all commands in one write, then read one reply per command."""
        self.send(commands)
        return self.receive(len(commands))

    def send(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Send all commands in one write; their replies are left to ``receive``.

        Once this returns the bytes are the kernel's: they reach Redis even if this
        process is killed before it reads a reply.
        """
        conn = self.conn
        try:
            # connect() first, never send_packed_command's own connect: that one skips
            # Sentinel's (it dials conn.host:conn.port, which is localhost:6379 before
            # the first connect and the dead master after a failover). No-op when connected.
            if not self._live:
                conn.connect()
            conn.send_packed_command(self._pack(commands), check_health=False)
        except self._failures as exc:
            self.disconnect()
            raise ConnectionLost(str(exc)) from None
        except BaseException:
            # Interrupted mid-write (a signal's exception): part of a command may be out.
            self.disconnect()
            raise

    def receive(self, count: int) -> list[Any]:
        """Read ``count`` replies, an error reply kept in place among them."""
        conn = self.conn
        replies: list[Any] = []
        try:
            for _ in range(count):
                try:
                    replies.append(conn.read_response())
                except self._response_error as exc:  # an error reply: still in step
                    replies.append(exc)
        except self._failures as exc:
            self.disconnect()
            raise ConnectionLost(str(exc)) from None
        except BaseException:
            # Interrupted mid-command (a signal's exception: soft time limit, terminate,
            # Ctrl-C): replies still due would be read as the next command's. Drop it.
            self.disconnect()
            raise
        return replies

    def disconnect(self) -> None:
        self._live = False
        try:
            self.conn.disconnect()  # redis-py only shuts down its own process's sockets
        except Exception:
            return
