"""The scheduler (``conveyor beat``): sends each periodic task when it is due, once.

Any number of schedulers may run against one broker (``beat``, ``worker --beat``,
``run``); they elect a leader through the broker's lease (``acquire_lease``) and only
the leader sends. A follower retries the lease every couple of seconds, so it takes
over at most ``beat_lease_seconds`` + 2 s after the leader dies.

Each run is sent at most once, even across a failover or two leaders overlapping (a
leader paused past its lease): before sending, the scheduler claims the run with a
lease named after the schedule and the due time; the first claim wins, a later one
fails and that run is not sent again. The claim, the message and the run record are
written in one broker batch, which on SQLite is one transaction: either all three
are stored or none, so a crash loses nothing and sends nothing twice. On a store
without transactions (Redis) the order is claim, send, record: a crash between claim
and send loses that one run, and the next leader logs it (docs/scheduler.md).

The loop never busy-waits: it sleeps until the next due time, the next lease
renewal, the next full look at the stored schedules (``beat_max_loop_interval``) or
the next check of the change marker that ``app.periodic`` rewrites on every run-time
change (once a second, one small read), whichever is first; a stop request wakes it.
A schedule added, enabled or disabled from the CLI is thus seen within about a
second, before the first run of a short interval falls due.

Two clocks, so that a stepped wall clock (NTP, a restored VM) changes nothing:
intervals (lease renewal, syncs, change checks) follow the monotonic clock, and due
times the broker's clock (``BrokerClock``): a leader keeps renewing after a step
back, and a step forward sends no run before it is due.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.exceptions import BrokerConnectionError, ConfigurationError
from conveyor.periodic import (
    CHANGES_KEY,
    CHANGES_NS,
    CONFIG_NS,
    CONFIG_TTL_S,
    LEADER_KEY,
    LEADER_NS,
    SCHEDULES_NS,
    STATE_NS,
    PeriodicEntry,
    RunState,
    config_drift,
    config_entries,
    config_record,
    cursor_of,
    decode_config,
    decode_record,
    definition,
    unknown_task,
)
from conveyor.schedules import crontab, get_zone, schedule, show_time

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.message import Message

log = logging.getLogger("conveyor.beat")

LEADER_LEASE = "beat-leader"
FOLLOWER_RETRY_S = 2.0
MAX_CATCH_UP = 1000  # slots sent per schedule per tick when catch_up=True; the rest next tick
MAX_COUNT = 100  # missed slots counted for the log line; more are "over MAX_COUNT"
CHANGE_CHECK_S = 1.0  # how often the leader looks at the change marker
CONFIG_REFRESH_S = 60.0  # how often a scheduler republishes its config and compares it


def default_owner() -> str:
    return f"beat.{os.getpid()}@{socket.gethostname()}.{uuid.uuid4().hex[:6]}"


def run_key(name: str, due_at: float) -> str:
    """The claim for one run: schedule name + due time (ms), identical in every process."""
    return f"beat-run:{name}:{round(due_at * 1000)}"


class BrokerClock:
    """Epoch seconds by the broker's clock, carried forward by the monotonic clock.

    Redis's is read with ``server_time()`` (one ``TIME``) only when ``resync()`` is
    called, at each lease renewal, so a step costs no extra round trip; a broker
    without ``server_time`` (SQLite, memory) lives on this host: its clock is ours.
    """

    def __init__(self, broker: Any) -> None:
        self._read: Callable[[], float] | None = getattr(broker, "server_time", None)
        self._base: tuple[float, float] | None = None

    def now(self) -> float:
        if self._read is None:
            return time.time()
        if self._base is None:
            self.resync()
        assert self._base is not None
        epoch, at = self._base
        return epoch + time.monotonic() - at

    def resync(self) -> None:
        if self._read is not None:
            self._base = (float(self._read()), time.monotonic())


@dataclass
class _Tracked:
    entry: PeriodicEntry
    state: RunState


class Beat:
    """One scheduler: follower until it wins the leader lease, then it sends due runs.

    Example::

        beat = Beat(app)
        threading.Thread(target=beat.run, daemon=True).start()
        ...
        beat.stop()
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        owner: str | None = None,
        lease_s: float | None = None,
        max_interval_s: float | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.owner = owner or default_owner()
        self.lease_s = float(lease_s if lease_s is not None else conf.beat_lease_seconds)
        self.max_interval_s = float(
            max_interval_s if max_interval_s is not None else conf.beat_max_loop_interval
        )
        if self.lease_s <= 0 or self.max_interval_s <= 0:
            raise ConfigurationError("beat_lease_seconds and beat_max_loop_interval must be positive")
        try:
            self.zone = get_zone(conf.timezone)
        except ValueError as exc:
            raise ConfigurationError(f"timezone setting: {exc}") from None
        self.config = config_entries(app)  # validated now: a bad beat_schedule stops start-up
        self.is_leader = False
        self._said_standby = False  # "standby" is logged once per spell of following
        self.sent = 0
        self._stop = threading.Event()
        self.clock = BrokerClock(app.broker)
        # Monotonic instants: a wall-clock step must not stop renewals or syncs.
        self._renewed_at = 0.0
        self._synced_at: float | None = None
        self._checked_at = 0.0
        self._publish_at = 0.0  # next publication of this beat's config (and comparison)
        self._started_at: float | None = None
        self._drift = ""  # the last difference from the leader's config that was logged
        self._marker: bytes | None = None  # the change marker as of the last sync
        self._tracked: dict[str, _Tracked] = {}
        scheme = app.conf.broker_url.split(":", 1)[0].lower()
        # Where a batch is one transaction, the run's claim joins it (see the module docstring).
        self._atomic_claim = scheme in ("sqlite", "memory")

    # -- lifecycle -------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end (signal-safe); the leader hands its lease back on the way out."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Loop until ``stop()``: lead or follow; errors reaching the broker are retried."""
        signals.beat_init.send(sender=self)
        log.info(
            "beat %s starting: %d config schedule(s), timezone %s, lease %gs",
            self.owner,
            len(self.config),
            self.zone,
            self.lease_s,
        )
        delay = 1.0
        try:
            while not self._stop.is_set():
                try:
                    wait_s = self.step(self.clock.now())
                    delay = 1.0
                except BrokerConnectionError as exc:
                    log.error("beat: cannot reach the broker: %s; retrying in %.0fs", exc, delay)
                    self.is_leader = False
                    wait_s, delay = delay, min(delay * 2, 30.0)
                except Exception:
                    # A store error mid-send rolled its batch back: nothing half-sent, so
                    # retrying the same run later is safe.
                    log.exception("beat: error; retrying in %.0fs", delay)
                    wait_s, delay = delay, min(delay * 2, 30.0)
                self._stop.wait(max(0.0, wait_s))
        finally:
            self._resign()

    def _resign(self) -> None:
        if self._started_at is not None:
            try:  # a stopped scheduler's config names no longer block `periodic add`
                self.app.broker.kv_delete(CONFIG_NS, self.owner)
            except Exception as exc:
                log.debug("beat %s: config record left to expire (%s)", self.owner, exc)
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            # Renewing with a tiny TTL ends the lease now: a follower takes over at its next try.
            self.app.broker.acquire_lease(LEADER_LEASE, self.owner, 0.01)
            log.info("beat %s: stopped; leader lease released", self.owner)
        except Exception as exc:  # the broker may be gone at shutdown; the lease runs out anyway
            log.warning(
                "beat %s: could not release the leader lease (%s); it expires in %gs",
                self.owner,
                exc,
                self.lease_s,
            )

    # -- one iteration ---------------------------------------------------------------
    def step(self, now: float) -> float:
        """Take or renew the lease, send what is due; returns seconds to sleep.

        ``now`` is the broker's time (``self.clock.now()``): due times count by it.
        """
        broker = self.app.broker
        mono = time.monotonic()
        if mono >= self._publish_at:
            self._publish(now, mono)
        if not self.is_leader:
            if not broker.acquire_lease(LEADER_LEASE, self.owner, self.lease_s):
                if not self._said_standby:
                    self._said_standby = True
                    log.info("beat %s: standby: another scheduler leads; taking over if it stops", self.owner)
                return min(FOLLOWER_RETRY_S, self.lease_s / 3)
            self._said_standby = False
            self.is_leader = True
            self._renewed_at = mono
            self._synced_at = None
            self._tracked.clear()
            self.clock.resync()
            broker.kv_set(LEADER_NS, LEADER_KEY, self.owner.encode())
            log.info("beat %s: leader now", self.owner)
        elif mono - self._renewed_at >= self.lease_s / 3:
            if not self._renew(mono):
                return min(FOLLOWER_RETRY_S, self.lease_s / 3)
        if self._synced_at is None or mono - self._synced_at >= self.max_interval_s or self._changed(mono):
            self.sync(now)
        # The caller's instant: a slot turning due during sync waits for the next step.
        next_at = self.tick(now)
        mono = time.monotonic()
        synced_at = self._synced_at if self._synced_at is not None else mono
        return max(
            0.0,
            min(
                next_at - self.clock.now(),
                synced_at + self.max_interval_s - mono,
                self._checked_at + CHANGE_CHECK_S - mono,
                self._renewed_at + self.lease_s / 3 - mono,
                self._publish_at - mono,
            ),
        )

    def _changed(self, mono: float) -> bool:
        """Has a run-time schedule changed since the last sync? (At most one read a second.)"""
        if mono - self._checked_at < CHANGE_CHECK_S:
            return False
        self._checked_at = mono
        return self.app.broker.kv_get(CHANGES_NS, CHANGES_KEY) != self._marker

    def _renew(self, mono: float) -> bool:
        if self.app.broker.acquire_lease(LEADER_LEASE, self.owner, self.lease_s):
            self._renewed_at = mono
            self.clock.resync()
            return True
        self.is_leader = False
        log.warning(
            "beat %s: lost the leader lease (paused past %gs?); following now", self.owner, self.lease_s
        )
        return False

    # -- config schedules: published, compared with the leader's -----------------------
    def _publish(self, now: float, mono: float) -> None:
        """Publish this beat's config (with a TTL: a crashed beat's goes away), and tell
        when it differs from the running leader's: its entries would wait unseen."""
        broker = self.app.broker
        if self._started_at is None:
            self._started_at = now
        self._publish_at = mono + CONFIG_REFRESH_S
        record = config_record(self.owner, self.config, self._started_at)
        broker.kv_set(CONFIG_NS, self.owner, record, ttl_s=CONFIG_TTL_S)
        if self.is_leader:
            return
        leader = broker.kv_get(LEADER_NS, LEADER_KEY)
        if leader is None or leader.decode() == self.owner:
            return
        raw = broker.kv_get(CONFIG_NS, leader.decode())
        theirs = decode_config(raw) if raw is not None else None
        if theirs is None:
            return  # a leader that publishes nothing (an older version, or gone)
        drift = config_drift({e.name: definition(e) for e in self.config}, theirs["entries"])
        if drift and drift != self._drift:
            log.warning(
                "beat %s: this beat_schedule differs from the one running, leader %s's "
                "(host %s, started %s): %s. The leader runs its own; this config's runs "
                "start once a scheduler with it leads (stop the old ones: docs/scheduler.md, Deploys)",
                self.owner,
                theirs.get("owner"),
                theirs.get("host"),
                _show(float(theirs.get("started_at") or 0), self.zone),
                drift,
            )
        elif not drift and self._drift:
            log.info("beat %s: beat_schedule now matches the leader's", self.owner)
        self._drift = drift

    def sync(self, now: float) -> None:
        """Re-read run-time schedules and run state from the store."""
        broker = self.app.broker
        # Read before the schedules: a change made meanwhile leaves a newer marker.
        self._marker = broker.kv_get(CHANGES_NS, CHANGES_KEY)
        self._checked_at = time.monotonic()
        entries = {e.name: e for e in self.config}
        for name, raw in broker.kv_items(SCHEDULES_NS).items():
            if name in entries:
                continue  # config wins: a run-time record of the same name is ignored
            entry = decode_record(name, raw)
            if entry is None:
                log.warning("beat: periodic task %r has a record this version cannot read; skipped", name)
                continue
            entries[name] = entry
        states = {k: RunState.decode(v) for k, v in broker.kv_items(STATE_NS).items()}
        tracked: dict[str, _Tracked] = {}
        for name, entry in entries.items():
            if not entry.enabled:
                continue
            old = self._tracked.get(name)
            stored = states.get(name)
            if old is not None and old.entry.since == entry.since and old.entry.schedule == entry.schedule:
                state = old.state
                if stored is not None and (stored.last_due_at or 0) > (state.last_due_at or 0):
                    state = stored  # another leader sent later runs (we were paused)
            elif stored is not None:
                state = stored
            else:
                state = RunState()
            if entry.since is None and state.since is None and state.last_due_at is None:
                # First sighting of a config schedule: its slots count from now, for every
                # scheduler (stored, so a follower taking over agrees on the next due time).
                state = replace(state, since=now)
                broker.kv_set(STATE_NS, name, state.encode())
            if old is None:
                log.info("beat: schedule %r: %s -> %s", name, entry.schedule_text, entry.task)
                problem = unknown_task(self.app, entry.task)
                if problem is not None:
                    log.warning("beat: schedule %r: %s", name, problem)
            tracked[name] = _Tracked(entry, state)
        for name in set(self._tracked) - set(tracked):
            log.info("beat: schedule %r removed or disabled", name)
        self._tracked = tracked
        self._synced_at = self._checked_at

    def tick(self, now: float) -> float:
        """Send every due run; returns the epoch time the next one is due."""
        next_at = now + self.max_interval_s
        for item in list(self._tracked.values()):
            if self._stop.is_set() or not self.is_leader:
                break
            due = self._due_slots(item, now)
            if due and item.entry.source == "runtime" and not self._still_scheduled(item, due[0]):
                continue  # removed or changed just before its run: the next sync has it
            for due_at in due:
                if not self._send_once(item, due_at):
                    break
            cursor = cursor_of(item.entry, item.state, now)
            next_at = min(next_at, self._next_after(item.entry, cursor))
        return next_at

    # -- due times -------------------------------------------------------------------
    def _next_after(self, entry: PeriodicEntry, after: float) -> float:
        return entry.schedule.next_run(dt.datetime.fromtimestamp(after, self.zone)).timestamp()

    def _slots(self, entry: PeriodicEntry, cursor: float, now: float) -> Iterator[float]:
        at = self._next_after(entry, cursor)
        while at <= now:
            yield at
            at = self._next_after(entry, at)

    def _due_slots(self, item: _Tracked, now: float) -> list[float]:
        entry = item.entry
        cursor = cursor_of(entry, item.state, now)
        first = self._next_after(entry, cursor)
        if first > now:
            return []
        if entry.catch_up:
            slots = []
            for at in self._slots(entry, cursor, now):
                slots.append(at)
                if len(slots) >= MAX_CATCH_UP:
                    break
            if len(slots) > 1:
                log.info(
                    "beat: %r has %d runs due since %s (no scheduler was leading); sending each (catch_up=True)",
                    entry.name,
                    len(slots),
                    _show(slots[0], self.zone),
                )
            return slots
        latest, missed = self._latest_slot(entry, cursor, now)
        if missed > 1:
            log.warning(
                "beat: %r had %s runs due between %s and %s (%s); "
                "sending the latest once, skipping the others (catch_up=False)",
                entry.name,
                f"{missed}" if missed <= MAX_COUNT else f"over {MAX_COUNT}",
                _show(first, self.zone),
                _show(latest, self.zone),
                "no scheduler was leading"
                if item.state.last_due_at is not None
                else "added or enabled before this scheduler saw it",
            )
        return [latest]

    def _latest_slot(self, entry: PeriodicEntry, cursor: float, now: float) -> tuple[float, int]:
        """The last slot at or before ``now``, and how many slots there were since ``cursor``
        (counted up to MAX_COUNT: months of a per-minute crontab are not walked)."""
        sched = entry.schedule
        first = self._next_after(entry, cursor)
        latest = max(first, sched.prev_run(dt.datetime.fromtimestamp(now, self.zone)).timestamp())
        if isinstance(sched, schedule):
            return latest, int(round((latest - first) / sched.seconds)) + 1
        count = 0
        for _ in self._slots(entry, cursor, latest):
            count += 1
            if count > MAX_COUNT:
                break
        return latest, count

    # -- sending ---------------------------------------------------------------------
    def _send_once(self, item: _Tracked, due_at: float) -> bool:
        """Claim, send and record one run; False when the leader lease was lost."""
        mono = time.monotonic()
        if mono - self._renewed_at >= self.lease_s * 0.5 and not self._renew(mono):
            return False  # never send on a lease that may have run out
        entry = item.entry
        broker = self.app.broker
        claim = run_key(entry.name, due_at)
        claim_ttl = max(3600.0, self.lease_s * 10)
        message = self._message(entry, due_at)
        state = item.state
        new_state = RunState(
            last_due_at=due_at,
            last_run_at=self.clock.now(),
            total_run_count=state.total_run_count + 1,
            since=state.since,
            last_task_id=message.id if message is not None else None,
        )
        won = True
        if not self._atomic_claim:
            won = broker.acquire_lease(claim, self.owner, claim_ttl)
        if won:
            with broker.batch():
                if self._atomic_claim:
                    won = broker.acquire_lease(claim, self.owner, claim_ttl)
                if won and message is not None:
                    self.app.publish(message)
                if won:
                    broker.kv_set(STATE_NS, entry.name, new_state.encode())
        if not won:
            log.info(
                "beat: %r run due %s was already claimed (by an earlier leader); not sent again",
                entry.name,
                _show(due_at, self.zone),
            )
            stored = RunState.decode(broker.kv_get(STATE_NS, entry.name))
            if (stored.last_due_at or 0) < due_at:
                log.warning(
                    "beat: %r run due %s was claimed but never recorded: the leader that claimed it "
                    "stopped mid-send, so it may not have been sent",
                    entry.name,
                    _show(due_at, self.zone),
                )
            item.state = replace(state, last_due_at=max(due_at, stored.last_due_at or 0))
            return True
        item.state = new_state
        if message is not None:
            self.sent += 1
            note = (
                entry.schedule.dst_note(dt.datetime.fromtimestamp(due_at, self.zone), self.zone)
                if isinstance(entry.schedule, crontab)
                else None
            )
            log.info(
                "beat: sent %s (%r, due %s) id=%s%s",
                entry.task,
                entry.name,
                _show(due_at, self.zone),
                message.id,
                f"; {note}" if note else "",
            )
            problem = unknown_task(self.app, entry.task)
            if problem is not None:
                log.warning("beat: sent %r (%r): %s", entry.task, entry.name, problem)
        return True

    def _still_scheduled(self, item: _Tracked, due_at: float) -> bool:
        """Re-read a run-time schedule right before its run: a removal (or a change)
        made since the last sync wins over the pending send, and no state is written."""
        entry = item.entry
        raw = self.app.broker.kv_get(SCHEDULES_NS, entry.name)
        current = decode_record(entry.name, raw) if raw is not None else None
        if (
            current is not None
            and current.enabled
            and current.since == entry.since
            and current.schedule == entry.schedule
        ):
            return True
        log.info(
            "beat: %r was removed, disabled or replaced before its run due %s; not sent",
            entry.name,
            _show(due_at, self.zone),
        )
        self._tracked.pop(entry.name, None)
        self._synced_at = None  # re-read everything at the next step
        return False

    def _message(self, entry: PeriodicEntry, due_at: float) -> Message | None:
        """The task message for one run; None (logged) when it cannot be built."""
        options = dict(entry.options)
        headers = {"periodic": entry.name, "periodic_due_at": due_at}
        task = self.app.tasks.get(entry.task)
        expires = options.pop("expires", None)
        if expires is None and task is not None:
            expires = task.expires
        if isinstance(expires, dt.timedelta):
            expires = expires.total_seconds()
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            # Counted from the due time, not the send: a run caught up hours late is
            # already expired, as it would have been had it been sent on time.
            expires = dt.datetime.fromtimestamp(due_at + expires, dt.timezone.utc)
        if expires is not None:
            options["expires"] = expires
        try:
            if task is not None:
                return task.build_message(entry.args, entry.kwargs, headers=headers, **options)
            return self.app.build_message(entry.task, entry.args, entry.kwargs, headers=headers, **options)
        except (TypeError, ValueError) as exc:
            log.error("beat: %r: cannot build the task message (%s); this run is skipped", entry.name, exc)
            return None


def _show(epoch: float, zone: dt.tzinfo) -> str:
    return show_time(epoch, zone)


class BeatThread:
    """Beat in a daemon thread, for ``worker --beat`` and ``conveyor run``."""

    def __init__(self, app: Conveyor, *, lease_s: float | None = None) -> None:
        self.beat = Beat(app, lease_s=lease_s)
        self.thread = threading.Thread(target=self._run, name="conveyor-beat", daemon=True)

    def _run(self) -> None:
        try:
            self.beat.run()
        except Exception:
            log.exception("beat thread stopped by an error; periodic tasks are no longer sent from here")

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.beat.stop()
        self.thread.join(timeout)
