"""What the Redis broker and the Redis result backend share: the URL, the client,
error translation, Lua scripts, and the per-thread write batch.

Both sides talk to Redis through one ``RedisLink``: a broker's
``result_backend()`` hands its link to the backend, so the worker's settle
(results, follow-up messages, acks) goes out as one MULTI/EXEC on one connection.

All I/O goes through redis-py: its URL parsing, TLS and AUTH options, Sentinel, and
its connection class with the hiredis parser. Each thread owns one redis-py
connection (``_redis_connection``, not a pool's), on which whole batches of commands
go out in one write; every process names its connections (``CLIENT SETNAME``), so
``CLIENT LIST`` shows which host and pid each one belongs to. Scripts are
``_redis_script.Script`` objects, ``.lua`` files beside the broker and the backend.

Errors: every failure leaves here as a ``BrokerError`` (a ``BrokerConnectionError``
when Redis cannot be reached), with the URL's password masked, so the worker's
retry-with-backoff logic and the CLI's one-line errors work unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from conveyor._redis_connection import (
    Connection,
    ConnectionLost,
    client_name,
    connection_class,
    is_error,
    is_noscript,
)
from conveyor._redis_script import Script
from conveyor.backends.base import Reply
from conveyor.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

T = TypeVar("T")
log = logging.getLogger("conveyor.broker")

DEFAULT_PREFIX = "conveyor"
DEFAULT_PUBLISH_RETRY_S = 10.0
# Longest single blocking command; a longer wait is several of them, so a blocked
# read never outlives the socket timeout and a dead server is noticed.
MAX_BLOCK_S = 2.0
_OUR_OPTIONS = ("prefix", "publish_retry")

DEFAULT_PORT = 6379
DEFAULT_SOCKET_TIMEOUT_S = 5.0

if TYPE_CHECKING:
    import redis


@dataclass(frozen=True)
class RedisURL:
    """A parsed ``redis://``, ``rediss://``, ``redis+sentinel://`` or ``redis+cluster://`` URL.

    ``client_url`` is what redis-py is given (our own options removed; for a cluster,
    the first node's URL, whose options every node's connections share);
    ``sentinels`` is set for Sentinel URLs, ``cluster_nodes`` for cluster URLs.
    """

    url: str
    client_url: str
    prefix: str
    publish_retry_s: float
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    password: str | None = None
    username: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    host: str = "localhost"
    port: int = DEFAULT_PORT
    tls: bool = False
    cluster_nodes: tuple[tuple[str, int], ...] = ()

    @functools.cached_property
    def socket_timeout(self) -> float | None:
        value = dict(self.options).get("socket_timeout", str(DEFAULT_SOCKET_TIMEOUT_S))
        return None if value.lower() in ("", "none") else float(value)


def mask(url: str) -> str:
    from conveyor.brokers.base import mask_url

    if url.lower().startswith(("redis+sentinel://", "redis+cluster://", "rediss+cluster://")):
        # urlsplit cannot read a host list; hide anything between :// and @.
        head, sep, rest = url.partition("://")
        auth, at, hosts = rest.rpartition("@")
        if at and ":" in auth:
            return f"{head}{sep}{auth.split(':', 1)[0]}:***@{hosts}"
        return url
    return mask_url(url)


def parse_url(url: str) -> RedisURL:
    """Split our options (``prefix``, ``publish_retry``) from the URL redis-py reads.

    Raises:
        ConfigurationError: the URL is malformed, with the reason.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis URL {mask(url)}: {exc}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OUR_OPTIONS}
    theirs = tuple((k, v) for k, v in query if k not in _OUR_OPTIONS)
    prefix = ours.get("prefix", DEFAULT_PREFIX)
    if not prefix or any(c in prefix for c in " {}\n"):
        raise ConfigurationError(f"bad prefix {prefix!r} in {mask(url)}: use letters, digits, '-', '_', ':'")
    try:
        publish_retry = float(ours.get("publish_retry", DEFAULT_PUBLISH_RETRY_S))
    except ValueError:
        raise ConfigurationError(f"publish_retry must be a number of seconds in {mask(url)}") from None
    scheme = parts.scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _parse_cluster(url, parts.netloc, parts.path, prefix, publish_retry, theirs)
    if scheme == "redis+sentinel":
        return _parse_sentinel(url, parts.netloc, parts.path, prefix, publish_retry, theirs)
    if scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"not a Redis URL: {mask(url)}")
    client_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(theirs), ""))
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis URL {mask(url)}: {exc}") from None
    db_text = dict(theirs).get("db") or parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ConfigurationError(f"bad database number {db_text!r} in {mask(url)}")
    try:
        float(dict(theirs).get("socket_timeout", "5") or 5)
    except ValueError:
        raise ConfigurationError(f"socket_timeout must be a number of seconds in {mask(url)}") from None
    return RedisURL(
        url,
        client_url,
        prefix,
        publish_retry,
        db=int(db_text),
        password=unquote(parts.password) if parts.password is not None else None,
        username=unquote(parts.username) if parts.username else None,
        options=theirs,
        host=parts.hostname or "localhost",
        port=port,
        tls=scheme == "rediss",
    )


def _parse_sentinel(
    url: str, netloc: str, path: str, prefix: str, publish_retry: float, options: tuple[tuple[str, str], ...]
) -> RedisURL:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``."""
    auth, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "26379"
        if not port.isdigit():
            raise ConfigurationError(f"bad Sentinel address {item!r} in {mask(url)}: use host:port")
        sentinels.append((host.strip("[]"), int(port)))
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ConfigurationError(
            f"{mask(url)} names no service: use redis+sentinel://host:26379,host2:26379/mymaster/0"
        )
    db = segments[1] if len(segments) > 1 else "0"
    if not db.isdigit():
        raise ConfigurationError(f"bad database number {db!r} in {mask(url)}")
    return RedisURL(
        url,
        "",
        prefix,
        publish_retry,
        sentinels=tuple(sentinels),
        service=unquote(segments[0]),
        db=int(db),
        password=password,
        username=username,
        options=options,
    )


def _parse_cluster(
    url: str, netloc: str, path: str, prefix: str, publish_retry: float, options: tuple[tuple[str, str], ...]
) -> RedisURL:
    """``redis+cluster://[[user]:password@]host:port[,host:port...][/0]`` (``rediss+cluster`` for TLS).

    Every key of the deployment lives in one slot: the prefix becomes the hash tag
    ``{prefix}``, the first braces of every key, so scripts and MULTI/EXEC batches
    work unchanged on the one master serving that slot (docs/brokers.md, Redis Cluster).
    """
    auth, at, hosts = netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, str(DEFAULT_PORT)
        if not host or not port.isdigit():
            raise ConfigurationError(f"bad cluster node {item!r} in {mask(url)}: use host:port")
        nodes.append((host.strip("[]"), int(port)))
    db = dict(options).get("db") or path.strip("/") or "0"
    if db != "0":
        raise ConfigurationError(f"a Redis Cluster has only database 0, not {db!r}: {mask(url)}")
    try:
        float(dict(options).get("socket_timeout", "5") or 5)
    except ValueError:
        raise ConfigurationError(f"socket_timeout must be a number of seconds in {mask(url)}") from None
    tls = url.lower().startswith("rediss")
    first_host, first_port = nodes[0]
    host_text = f"[{first_host}]" if ":" in first_host else first_host
    userinfo = f"{auth}@" if at else ""
    client_url = urlunsplit(
        ("rediss" if tls else "redis", f"{userinfo}{host_text}:{first_port}", "/0", urlencode(options), "")
    )
    user, colon, secret = auth.partition(":")
    return RedisURL(
        url,
        client_url,
        "{" + prefix + "}",
        publish_retry,
        password=unquote(secret) if at and colon else None,
        username=unquote(user) if at and user else None,
        options=options,
        host=first_host,
        port=first_port,
        tls=tls,
        cluster_nodes=tuple(nodes),
    )


def _client_kwargs(parsed: RedisURL) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = dict(parsed.options)
    # Our own retry logic decides what is retried (and logs it); redis-py's silent
    # retries would also re-run non-idempotent scripts. RESP2: replies are read raw,
    # and their shapes must not depend on the server's or redis-py's default protocol.
    kwargs: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_keepalive": True, "protocol": 2}
    # A dead server is noticed within the socket timeout: every blocking command
    # here is shorter (max_block_s), so a timeout always means a lost connection.
    if "socket_timeout" not in options:
        kwargs["socket_timeout"] = DEFAULT_SOCKET_TIMEOUT_S
    if "socket_connect_timeout" not in options:
        kwargs["socket_connect_timeout"] = DEFAULT_SOCKET_TIMEOUT_S
    return kwargs


def make_client(parsed: RedisURL) -> redis.Redis:
    """redis-py's client for the URL; ``RedisLink`` makes each thread's connection from
    its pool's connection class and options (Sentinel-aware for Sentinel URLs)."""
    try:
        import redis
    except ImportError:
        raise ConfigurationError(
            "the Redis broker needs the redis package: pip install 'conveyor-tasks[redis]'"
        ) from None
    try:
        if parsed.sentinels:
            from redis import sentinel as sentinel_module

            Sentinel: Any = sentinel_module.Sentinel  # noqa: N806 - untyped in redis-py
            extra = dict(parsed.options)
            sentinel_password = extra.pop("sentinel_password", None)
            timeout = parsed.socket_timeout
            sentinel = Sentinel(
                list(parsed.sentinels),
                socket_timeout=timeout,
                sentinel_kwargs={"password": sentinel_password, "socket_timeout": timeout},
            )
            kwargs = _client_kwargs(parsed)
            kwargs["socket_timeout"] = timeout
            master: redis.Redis = sentinel.master_for(
                parsed.service, db=parsed.db, password=parsed.password, username=parsed.username, **kwargs
            )
            return master
        return redis.Redis.from_url(parsed.client_url, **_client_kwargs(parsed))
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis URL {mask(parsed.url)}: {exc}") from None


def translate(exc: Exception, url: str) -> BrokerError:
    """One clear line for any failure."""
    where = mask(url)
    text = (str(exc) or type(exc).__name__).rstrip(".")
    if isinstance(exc, (ConnectionLost, OSError)):
        return BrokerConnectionError(f"cannot reach Redis at {where}: {text}")
    if is_noscript(exc):
        text = f"NOSCRIPT {text}"  # redis-py keeps the error code in the type only
    return BrokerError(f"Redis at {where} failed: {text}")


_pid = os.getpid()  # kept current by a fork hook: getpid() is a system call per use
_tag = ""  # random, made on first use in each process (see process_tag)


def _after_fork_in_child() -> None:
    global _pid, _tag, _slot_maps_lock
    _pid = os.getpid()
    _tag = ""
    _slot_maps_lock = threading.Lock()  # another thread may have held it at fork()


def process_tag() -> str:
    """Random per process, new in every forked child (a recycled pid gets a new one)."""
    global _tag
    if not _tag:
        _tag = os.urandom(6).hex()
    return _tag


os.register_at_fork(after_in_child=_after_fork_in_child)

# Cluster URLs: redis-py's slot map per (first node's URL, nodes), with the pid that
# made it (a forked child makes its own). See RedisLink._discover.
_slot_maps: dict[tuple[str, tuple[tuple[str, int], ...]], tuple[int, Any]] = {}
_slot_maps_lock = threading.Lock()


class RedisLink:
    """One Redis endpoint plus the per-thread connections and write batches, shared
    by a broker and its result backend.

    Args:
        url: the broker or backend URL (``redis://``, ``rediss://``, ``redis+sentinel://``).
    """

    def __init__(self, url: str) -> None:
        self.parsed = parse_url(url)
        self.url = url
        self.prefix = self.parsed.prefix
        # Made now, not on first use: a worker makes its broker before it forks its
        # pool, and the children then share redis-py's modules with it instead of
        # each importing them again (CPU at start, memory for good). Connects nothing.
        self._client: redis.Redis | None = make_client(self.parsed)
        connection_class(self._client.connection_pool.connection_class)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sources: dict[str, str] = {}  # sha -> Lua source, for NOSCRIPT
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # every thread's own
        # Cluster URLs: the master serving the prefix's slot, found on first use and
        # again after a lost connection or a redirect (failover, resharding).
        self._master: tuple[str, int] | None = None
        self._stale = False  # the process's slot map may be out of date: read it again
        self._node_clients: dict[tuple[str, int], redis.Redis] = {}

    @property
    def client(self) -> redis.Redis:
        """redis-py's client (made on first use): the URL's options, TLS, Sentinel."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_client(self.parsed)
                client = self._client
        return client

    @property
    def max_block_s(self) -> float:
        """Longest single blocking command: under the socket timeout, with room to spare."""
        timeout = self.parsed.socket_timeout
        return MAX_BLOCK_S if not timeout else max(0.05, min(MAX_BLOCK_S, timeout / 2))

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- calls --------------------------------------------------------------------
    def call(self, operation: Callable[[], T], *, retry_s: float = 0.0, failed: bool = False) -> T:
        """Run ``operation()`` and translate errors.

        A connection that died with a Redis restart fails the first try; one
        immediate retry on a fresh connection hides that. ``retry_s`` allows further
        tries with capped backoff for that long (producers: ``publish_retry``).
        ``failed``: the caller's own first try failed already.
        """
        self.flush()  # a read inside a batch sees the batch's earlier writes
        deadline = time.monotonic() + retry_s if failed else None
        delay = 0.05
        attempt = int(failed)
        while True:
            try:
                return operation()
            except ConnectionLost as exc:
                self._lost()
                attempt += 1
                if attempt == 1:
                    deadline = time.monotonic() + retry_s
                    continue
                if deadline is None or time.monotonic() + delay > deadline:
                    raise translate(exc, self.url) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def send(self, commands: Sequence[tuple[Any, ...]], *, retry_s: float = 0.0) -> list[Any]:
        """Send commands in one write and read every reply: every call goes here.

        Replies are raw RESP2 (bytes, ints, lists, None); an error reply raises
        ``BrokerError``.
        """
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and conn.pid == _pid and not conn.owed and not getattr(local, "pending", None):
            # The common case, straight to the connection: the layers below cost a
            # tenth of a loopback round trip (see docs/benchmarks.md, delay()).
            try:
                # A ConnectionLost from here means nothing ran, or the connection died
                # under it: the same as a failed first try in call().
                return self._checked(commands, conn.exchange(commands))
            except ConnectionLost:
                self._lost()
                return self.call(lambda: self._exchange(commands), retry_s=retry_s, failed=True)
        return self.call(lambda: self._exchange(commands), retry_s=retry_s)

    def _connection(self) -> Any:
        local = self._local
        conn: Any = getattr(local, "conn", None)
        if conn is None or conn.pid != _pid:
            # After fork() the inherited object shares the parent's socket: replace it
            # without shutting it down (the parent still uses it).
            conn = self._new_connection()
            local.conn = conn
            self._connections.add(conn)
        elif conn.owed:
            self._read_owed(conn)  # replies due before this command's, not as its own
            if getattr(local, "conn", None) is not conn:  # dropped: a cluster redirect
                return self._connection()
        return conn

    def _new_connection(self) -> Connection:
        if self.parsed.cluster_nodes:
            return Connection(self._master_client(), client_name())
        return Connection(self.client, client_name())

    # -- cluster ------------------------------------------------------------------
    def _master_client(self) -> redis.Redis:
        """A client for the master serving this prefix's slot (the URL's options,
        that node's address); connects nothing itself."""
        import redis

        template = self.client.connection_pool
        with self._lock:
            if self._master is None:
                self._master = self._discover()
            address = self._master
            client = self._node_clients.get(address)
            if client is None:
                options = {**template.connection_kwargs, "host": address[0], "port": address[1]}
                pool = redis.ConnectionPool(connection_class=template.connection_class, **options)
                client = self._node_clients[address] = redis.Redis(connection_pool=pool)
            return client

    def _discover(self) -> tuple[str, int]:
        """Ask the cluster which master serves the prefix's slot (under ``_lock``).

        The slot map is redis-py's ``RedisCluster``, one per cluster URL per process:
        a link made later (another app, a broker and its backend) looks the slot up
        without asking the cluster again; a link that lost its master reads the map
        again, from every node the map knows (the URL's own node may have died).
        """
        from redis import cluster as cluster_module
        from redis.cluster import RedisCluster
        from redis.exceptions import RedisClusterException, RedisError

        key = (self.parsed.client_url, self.parsed.cluster_nodes)
        try:
            with _slot_maps_lock:
                pid, slot_map = _slot_maps.get(key, (0, None))
                if slot_map is None or pid != _pid:
                    ClusterNode: Any = cluster_module.ClusterNode  # noqa: N806 - untyped in redis-py
                    others = [ClusterNode(host, port) for host, port in self.parsed.cluster_nodes[1:]]
                    slot_map = RedisCluster.from_url(
                        self.parsed.client_url,
                        startup_nodes=others,
                        socket_timeout=self.parsed.socket_timeout,
                        socket_connect_timeout=self.parsed.socket_timeout,
                        protocol=2,
                    )
                    _slot_maps[key] = (_pid, slot_map)
                elif self._stale:
                    slot_map.nodes_manager.initialize()
                self._stale = False
                node = slot_map.get_node_from_key(self.key("slot"))
                # The map is read again only after a failure: hold no idle sockets.
                slot_map.disconnect_connection_pools()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise ConnectionLost(f"no cluster master found for slot of {self.prefix}: {exc}") from None
        return str(node.host), int(node.port)

    def _lost(self) -> None:
        """A cluster connection failed or was redirected: the next one asks the
        cluster again where the slot lives (a failover may have moved it)."""
        if not self.parsed.cluster_nodes:
            return
        with self._lock:
            self._master = None
            self._stale = True
        self._drop_connection()

    def _redirected(self, reply: Any) -> bool:
        """MOVED, ASK, CLUSTERDOWN, TRYAGAIN: the command did not run on this node."""
        if not self.parsed.cluster_nodes or not isinstance(reply, Exception):
            return False
        from redis.exceptions import AskError, ClusterDownError, TryAgainError

        # MovedError is an AskError; redis-py's parser makes these from the error code.
        return isinstance(reply, (AskError, ClusterDownError, TryAgainError))

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.disconnect()

    def _exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return self._checked(commands, self._connection().exchange(commands))

    def _checked(self, commands: Sequence[tuple[Any, ...]], replies: list[Any]) -> list[Any]:
        for reply in replies:
            if isinstance(reply, Exception):  # an error reply, rare
                if self._redirected(reply):
                    raise ConnectionLost(str(reply))
                if is_noscript(reply) and len(commands) == 1:
                    return self._reload_scripts(commands)
                raise translate(reply, self.url)
        return replies

    def _reload_scripts(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Redis lost its script cache (restart, SCRIPT FLUSH): send the sources."""
        retry = []
        for args in commands:
            if args and args[0] == "EVALSHA":
                retry.append(("EVAL", self._sources[args[1]], *args[2:]))
            else:
                retry.append(args)
        return self._exchange(retry)

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Any], *, retry_s: float = 0.0) -> Any:
        """Run a script now, or queue it in this thread's batch (returns None then)."""
        self._sources.setdefault(script.sha, script.source)
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        pending = self._pending()
        if pending is not None:
            pending.append(command)
            return None
        return self.send([command], retry_s=retry_s)[0]

    def run_replied(
        self, script: Script, keys: Sequence[str], args: Sequence[Any], *, convert: Callable[[Any], T]
    ) -> Reply[T]:
        """Run a script now, or queue it in this thread's batch and answer once the
        batch's MULTI/EXEC is sent; ``convert`` turns the raw reply into the answer."""
        pending = self._pending()
        if pending is None:
            return Reply.now(convert(self.run(script, keys, args)))
        self._sources.setdefault(script.sha, script.source)
        reply: Reply[T] = Reply()
        self._local.replies.append((len(pending), lambda raw: reply.set(convert(raw))))
        pending.append(("EVALSHA", script.sha, len(keys), *keys, *args))
        return reply

    def command_then(self, args: tuple[Any, ...], then: Callable[[Any], None]) -> None:
        """Run a write command now, or queue it in this thread's batch; ``then`` gets
        its raw reply once known (after the batch's MULTI/EXEC)."""
        pending = self._pending()
        if pending is None:
            then(self.send([args])[0])
            return
        self._local.replies.append((len(pending), then))
        pending.append(args)

    def write(
        self, commands: Sequence[tuple[Any, ...]], *, retry_s: float = 0.0, atomic: bool = False
    ) -> None:
        """Send write commands now (one round trip), or queue them in this thread's
        batch; ``atomic``: as one MULTI/EXEC, all or nothing."""
        pending = self._pending()
        if pending is not None:
            pending.extend(commands)
            return
        if not atomic or len(commands) < 2:
            self.send(commands, retry_s=retry_s)
            return
        replies = self.send([("MULTI",), *commands, ("EXEC",)], retry_s=retry_s)
        for reply in replies[-1] or ():
            if is_error(reply):
                raise translate(reply, self.url)

    def command(self, *args: Any, retry_s: float = 0.0) -> Any:
        """Run a write command now, or queue it in this thread's batch."""
        pending = self._pending()
        if pending is not None:
            pending.append(args)
            return None
        return self.send([args], retry_s=retry_s)[0]

    def read(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script whose answer is needed now (flushing this thread's batch first)."""
        self._sources.setdefault(script.sha, script.source)
        return self.send([("EVALSHA", script.sha, len(keys), *keys, *args)])[0]

    # -- batching -----------------------------------------------------------------
    def _pending(self) -> list[tuple[Any, ...]] | None:
        return getattr(self._local, "pending", None)

    def batch(self, *, reply_later: bool = False) -> _Batch:
        """This thread's writes queued and sent as one MULTI/EXEC at the end.

        ``reply_later``: sent without waiting for the reply, which is read before
        this thread's next command or by ``read_replies()``; the outermost batch decides.
        """
        return _Batch(self, reply_later)

    def flush(self) -> None:
        """Send this thread's queued writes as one MULTI/EXEC (one round trip; with
        ``batch(reply_later=True)``, sent without waiting for the reply)."""
        pending = self._pending()
        if not pending:
            return
        commands = list(pending)
        pending.clear()
        replies: list[tuple[int, Callable[[Any], None]]] = list(self._local.replies)
        self._local.replies.clear()
        self._local.pending = None
        later = getattr(self._local, "reply_later", False)
        try:
            if later:
                self.call(lambda: self._send_later(_Owed(commands, replies)))
                return
            results = self.call(lambda: self._transact(commands))
        finally:
            self._local.pending = pending if getattr(self._local, "depth", 0) else None
        _answer(replies, results)

    def _transact(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """MULTI/EXEC with scripts by SHA, loaded first on a connection that lacks them.

        A NOSCRIPT inside MULTI fails only that command while the others apply, so
        each connection loads the batch's scripts (SCRIPT LOAD, in the same write as
        the batch) after every (re)connect; were the cache flushed under a live
        connection anyway, the refused commands are sent again with their source.
        """
        conn = self._connection()
        sent = self._transaction(conn, commands)
        return self._results(conn, commands, conn.exchange(sent))

    def _transaction(self, conn: Connection, commands: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """What goes out for a MULTI/EXEC of ``commands``: the scripts this connection
        lacks loaded first, in the same write."""
        conn.connect()  # no-op when connected; a reconnect empties conn.loaded
        loaded: set[str] = conn.loaded
        missing = {args[1] for args in commands if args[0] == "EVALSHA" and args[1] not in loaded}
        prelude = [("SCRIPT", "LOAD", self._sources[sha]) for sha in sorted(missing)]
        loaded |= missing  # a load that failed leaves its EVALSHAs refused: sent again below
        return [*prelude, ("MULTI",), *commands, ("EXEC",)]

    def _results(self, conn: Connection, commands: list[tuple[Any, ...]], replies: list[Any]) -> list[Any]:
        """The EXEC's answers, once the replies to ``_transaction`` are read."""
        loaded = conn.loaded
        for reply in replies:
            if self._redirected(reply):  # refused when queued: EXEC applied nothing
                raise ConnectionLost(str(reply))
        for reply in replies[:-1]:
            if is_error(reply):
                raise translate(reply, self.url)
        results = replies[-1]
        if is_error(results):  # EXECABORT
            raise translate(results, self.url)
        refused = [args for args, reply in zip(commands, results or [], strict=False) if is_noscript(reply)]
        for reply in results or []:
            if is_error(reply) and not is_noscript(reply):
                raise translate(reply, self.url)
        answers = list(results or [])
        if refused:
            loaded.clear()
            again = [("EVAL", self._sources[a[1]], *a[2:]) if a[0] == "EVALSHA" else a for a in refused]
            retried = iter(self._exchange([("MULTI",), *again, ("EXEC",)])[-1] or [])
            answers = [next(retried) if is_noscript(a) else a for a in answers]
        return answers

    # -- replies read later ---------------------------------------------------------
    def _send_later(self, owed: _Owed) -> None:
        conn = self._connection()
        sent = self._transaction(conn, owed.commands)
        owed.count = len(sent)
        # Owed before the write: were it interrupted midway, the next command reads
        # (and fails on) what it left, never takes those replies for its own.
        conn.owed.append(owed)
        try:
            conn.send(sent)
        except ConnectionLost:
            conn.owed.remove(owed)  # call() sends it again
            raise

    def _read_owed(self, conn: Connection) -> None:
        """Read the replies of the batches sent with ``reply_later``, oldest first.

        A batch whose replies say it failed (or whose connection was lost before
        they came) is logged and kept to be sent again by ``read_replies()``, as the
        synchronous path's caller would retry it; the command waiting behind them
        goes on, on a new connection if need be. An interruption (a signal's
        exception) drops the connection: its replies are unknown.
        """
        while conn.owed:
            owed = conn.owed.pop(0)
            try:
                replies = conn.receive(owed.count)
                results = self._results(conn, owed.commands, replies)
            except (ConnectionLost, BrokerError) as exc:
                lost = isinstance(exc, ConnectionLost)
                failed = [owed, *conn.owed] if lost else [owed]
                if lost:
                    # Their replies went with the connection, or (a cluster redirect)
                    # are still on their way from the wrong node: drop it either way.
                    conn.owed.clear()
                    conn.disconnect()
                    self._lost()
                log.error(
                    "A Redis write sent ahead of its reply failed: %s; sending it again",
                    translate(exc, self.url) if lost else exc,
                )
                conn.failed.extend(failed)
                continue
            except BaseException:
                conn.failed.extend([owed, *conn.owed])
                conn.owed.clear()
                conn.disconnect()  # replies may still be on their way: none is read as another's
                raise
            _answer(owed.answers, results)

    def read_replies(self) -> None:
        """Read the replies of this thread's ``batch(reply_later=True)`` batches now,
        and send again, waiting for the reply, those that failed.

        Raises:
            BrokerError: sending one again failed; it stays to be sent by the next call.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.pid != _pid:
            return  # none sent by this thread (in this process)
        if conn.owed:
            self._read_owed(conn)
        while conn.failed:
            owed = conn.failed[0]
            results = self.call(functools.partial(self._transact, owed.commands))
            conn.failed.pop(0)
            _answer(owed.answers, results)

    def close(self) -> None:
        self._drop_connection()
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                conn.disconnect()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.connection_pool.disconnect()


@dataclass
class _Owed:
    """A batch sent without waiting for its reply."""

    commands: list[tuple[Any, ...]]  # between MULTI and EXEC
    answers: list[tuple[int, Callable[[Any], None]]]  # (index in commands, what gets its reply)
    count: int = 0  # replies due: the scripts loaded first, MULTI, commands, EXEC


def _answer(answers: Sequence[tuple[int, Callable[[Any], None]]], results: list[Any]) -> None:
    for index, answer in answers:
        answer(results[index])


class _Batch:
    """Context manager: this thread's writes are queued and sent together at exit."""

    def __init__(self, link: RedisLink, reply_later: bool = False) -> None:
        self.link = link
        self.reply_later = reply_later

    def __enter__(self) -> None:
        local = self.link._local
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        if depth == 0:
            local.pending = []
            local.replies = []  # (index in pending, setter of its Reply): run_replied
            local.reply_later = self.reply_later

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        local = self.link._local
        local.depth -= 1
        if local.depth:
            return
        if exc_type is not None:  # the caller failed midway: send nothing of it
            local.pending = None
            local.reply_later = False
            return
        try:
            self.link.flush()
        finally:
            local.pending = None
            local.reply_later = False
