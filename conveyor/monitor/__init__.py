"""Built-in monitoring: worker heartbeats, task events, inspect and control.

Everything travels through the broker's store (kv records and append-only logs),
so monitoring works on every broker with nothing more to run, and its history
survives a restart of the dashboard or of the workers.

- ``workers``: heartbeats in kv "workers", ``list_workers(app)``;
- ``events``: task events in log "events", written in the worker's settle batches;
- ``index``: ``TaskIndex``, an in-memory index of the event log for the dashboard;
- ``control``: ``app.control`` (inspect, revoke, rate_limit, shutdown) over logs
  "control" and "replies".
"""

from __future__ import annotations

EVENTS_STREAM = "events"
CONTROL_STREAM = "control"
REPLIES_STREAM = "replies"
WORKERS_NAMESPACE = "workers"
REVOKED_NAMESPACE = "revoked"
