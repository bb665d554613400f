"""Every Celery setting and what Conveyor does with it: the table behind the start-up warnings.

Three kinds, as docs/migrating-from-celery.md lists them:

- ``HONOURED``: a Conveyor setting of the same name and meaning (config.SETTINGS), or
  a behaviour Conveyor always has (the setting is read and agrees with it).
- ``MAPPED``: read and turned into Conveyor's own setting or behaviour
  (``Settings.update`` does the turning).
- ``IGNORED``: known, not honoured; a worker or beat that finds one set logs one
  WARNING at start naming it and what Conveyor does instead.

A name in none of the three is not Celery's and is kept silently in ``conf.extra``.
"""

from __future__ import annotations

HONOURED = "honoured"
MAPPED = "mapped"
IGNORED = "ignored"

# Name -> (kind, what Conveyor does). Celery 5.4's settings, lower-case names.
CELERY_SETTINGS: dict[str, tuple[str, str]] = {
    # -- general
    "accept_content": (HONOURED, "content types a worker deserializes; others are dead-lettered unread"),
    "result_accept_content": (HONOURED, "content types a client reads results in"),
    "enable_utc": (HONOURED, "times are UTC inside; `timezone` is the zone crontab fields and displays use"),
    "timezone": (HONOURED, "same"),
    # -- tasks
    "task_annotations": (HONOURED, "per-task attribute overrides, dict or '*' form, applied at registration"),
    "task_compression": (IGNORED, "messages are not compressed; keep arguments small (ids, not data)"),
    "task_protocol": (IGNORED, "Conveyor's own versioned JSON envelope (docs/message-format.md)"),
    "task_serializer": (HONOURED, "json (default), msgpack or pickle"),
    "task_publish_retry": (HONOURED, "publishing always retries a lost broker (the URL's publish_retry)"),
    "task_publish_retry_policy": (IGNORED, "the broker URL's ?publish_retry=SECONDS sets how long"),
    "task_always_eager": (HONOURED, "same"),
    "task_eager_propagates": (HONOURED, "same"),
    "task_store_eager_result": (IGNORED, "eager results are returned, not stored"),
    "task_remote_tracebacks": (HONOURED, "the worker's traceback is always stored with a failure"),
    "task_ignore_result": (HONOURED, "same"),
    "task_store_errors_even_if_ignored": (
        IGNORED,
        "failures of ignore_result tasks reach the event log and DLQ",
    ),
    "task_track_started": (HONOURED, "same"),
    "task_time_limit": (HONOURED, "same"),
    "task_soft_time_limit": (HONOURED, "same"),
    "task_allow_error_cb_on_chord_header": (IGNORED, "a failed chord member fails the body"),
    "task_acks_late": (HONOURED, "same"),
    "task_acks_on_failure_or_timeout": (
        HONOURED,
        "False dead-letters the message (Celery: reject, no requeue)",
    ),
    "task_reject_on_worker_lost": (HONOURED, "same; Conveyor's default is True (requeue), Celery's False"),
    "task_default_rate_limit": (HONOURED, "same, across all workers"),
    "task_default_queue": (HONOURED, "same"),
    "task_default_queue_type": (IGNORED, "no AMQP queue types"),
    "task_default_exchange": (IGNORED, "no exchanges: a task goes to a queue by name"),
    "task_default_exchange_type": (IGNORED, "no exchanges"),
    "task_default_routing_key": (IGNORED, "no routing keys: task_routes maps names to queues"),
    "task_default_delivery_mode": (IGNORED, "every message is durable in the broker"),
    "task_queues": (HONOURED, "their names are the queues a worker consumes when -Q is not given"),
    "task_routes": (HONOURED, "same: exact names, glob patterns, {'queue': ...}"),
    "task_queue_max_priority": (IGNORED, "every queue has priorities 0-9"),
    "task_default_priority": (HONOURED, "same"),
    "task_inherit_parent_priority": (IGNORED, "a child task gets its own or the default priority"),
    "task_create_missing_queues": (HONOURED, "queues always exist once named"),
    "task_create_missing_queue_type": (IGNORED, "no AMQP queue types"),
    "task_create_missing_queue_exchange_type": (IGNORED, "no exchanges"),
    "task_send_sent_event": (IGNORED, "the event log starts at task-received"),
    # -- results
    "result_backend": (
        HONOURED,
        "same (None, `django-db`, `rpc://`: the broker's store; `db+postgresql://...`, `db+sqlite:///...`: Conveyor's tables there)",
    ),
    "result_backend_always_retry": (HONOURED, "storing a result is retried until written"),
    "result_backend_max_sleep_between_retries_ms": (IGNORED, "retries back off up to 30 s"),
    "result_backend_base_sleep_between_retries_ms": (IGNORED, "retries back off from 1 s"),
    "result_backend_max_retries": (IGNORED, "storing a result is retried until written"),
    "result_backend_thread_safe": (HONOURED, "backends are thread-safe"),
    "result_backend_transport_options": (IGNORED, "options go in the result backend URL"),
    "result_serializer": (HONOURED, "json (default), msgpack or pickle"),
    "result_compression": (IGNORED, "results are not compressed"),
    "result_extended": (HONOURED, "results always keep name, args, kwargs, worker, queue, retries"),
    "result_expires": (HONOURED, "same"),
    "result_cache_max": (IGNORED, "AsyncResult reads the store on each access"),
    "result_chord_join_timeout": (IGNORED, "a chord completes from a stored counter, no join"),
    "result_chord_retry_interval": (IGNORED, "a chord completes from a stored counter, no polling"),
    "result_persistent": (HONOURED, "results are durable in the store"),
    "database_engine_options": (IGNORED, "no SQLAlchemy result backend"),
    "database_short_lived_sessions": (IGNORED, "no SQLAlchemy result backend"),
    "database_table_schemas": (IGNORED, "no SQLAlchemy result backend"),
    "database_table_names": (IGNORED, "no SQLAlchemy result backend"),
    "redis_backend_health_check_interval": (IGNORED, "pass health_check_interval in the Redis URL"),
    "redis_backend_use_ssl": (IGNORED, "use a rediss:// URL with ssl_* options"),
    "redis_max_connections": (IGNORED, "one connection per thread"),
    "redis_socket_connect_timeout": (IGNORED, "pass socket_connect_timeout in the Redis URL"),
    "redis_socket_timeout": (IGNORED, "pass socket_timeout in the Redis URL"),
    "redis_retry_on_timeout": (HONOURED, "commands are retried after a reconnect"),
    "redis_socket_keepalive": (HONOURED, "sockets always keep alive"),
    "cache_backend": (IGNORED, "no cache result backend"),
    "cache_backend_options": (IGNORED, "no cache result backend"),
    # -- broker
    "broker_url": (HONOURED, "same"),
    "broker_read_url": (IGNORED, "one broker_url for reading and writing"),
    "broker_write_url": (IGNORED, "one broker_url for reading and writing"),
    "broker_failover_strategy": (IGNORED, "use redis+sentinel:// for failover"),
    "broker_heartbeat": (IGNORED, "no AMQP heartbeats; worker heartbeats are worker_heartbeat_interval"),
    "broker_heartbeat_checkrate": (IGNORED, "no AMQP heartbeats"),
    "broker_use_ssl": (IGNORED, "use a rediss:// URL with ssl_* options"),
    "broker_pool_limit": (IGNORED, "one connection per thread"),
    "broker_connection_timeout": (IGNORED, "pass socket_connect_timeout in the broker URL"),
    "broker_connection_retry": (HONOURED, "a lost broker is always retried with backoff"),
    "broker_connection_retry_on_startup": (HONOURED, "a worker always waits for its broker at start"),
    "broker_connection_max_retries": (IGNORED, "workers retry for ever, one log line per try"),
    "broker_channel_error_retry": (HONOURED, "errors reaching the broker are retried"),
    "broker_login_method": (IGNORED, "credentials go in the broker URL"),
    "broker_native_delayed_delivery_queue_type": (IGNORED, "delays live in the broker on every transport"),
    "broker_transport": (IGNORED, "the broker URL's scheme picks the transport"),
    "broker_transport_options": (MAPPED, "visibility_timeout -> broker_visibility_timeout; others ignored"),
    # -- worker
    "imports": (MAPPED, "added to the app's include= modules"),
    "include": (MAPPED, "added to the app's include= modules"),
    "worker_deduplicate_successful_tasks": (
        IGNORED,
        "leases keep a task from running twice while its worker lives",
    ),
    "worker_concurrency": (HONOURED, "same"),
    "worker_prefetch_multiplier": (HONOURED, "same"),
    "worker_enable_prefetch_count_reduction": (HONOURED, "prefetched messages are leased, not lost"),
    "worker_lost_wait": (IGNORED, "a dead child is noticed at once"),
    "worker_max_tasks_per_child": (HONOURED, "same"),
    "worker_max_memory_per_child": (HONOURED, "same (prefork)"),
    "worker_disable_rate_limits": (IGNORED, "rate limits always apply, across all workers"),
    "worker_state_db": (IGNORED, "revokes are kept in the broker"),
    "worker_timer_precision": (IGNORED, "no timer to tune"),
    "worker_enable_remote_control": (HONOURED, "app.control and conveyor inspect/control always work"),
    "worker_proc_alive_timeout": (IGNORED, "children are checked continuously"),
    "worker_cancel_long_running_tasks_on_connection_loss": (
        IGNORED,
        "running tasks finish; acks wait for the broker",
    ),
    "worker_detect_quorum_queues": (IGNORED, "no AMQP queue types"),
    "worker_soft_shutdown_timeout": (IGNORED, "worker_shutdown_timeout bounds a warm shutdown"),
    "worker_enable_soft_shutdown_on_idle": (IGNORED, "worker_shutdown_timeout bounds a warm shutdown"),
    "worker_send_task_events": (HONOURED, "same (on by default)"),
    "worker_hijack_root_logger": (IGNORED, "the worker adds its handler only when logging is not configured"),
    "worker_log_color": (IGNORED, "plain log lines"),
    "worker_log_format": (IGNORED, "Celery's default format is used"),
    "worker_task_log_format": (IGNORED, "records carry task_name and task_id for your own format"),
    "worker_redirect_stdouts": (IGNORED, "print() in a task goes to the worker's stdout"),
    "worker_redirect_stdouts_level": (IGNORED, "print() in a task goes to the worker's stdout"),
    "worker_pool": (HONOURED, "same: prefork, threads, solo"),
    "worker_pool_restarts": (HONOURED, "dead children are always replaced"),
    "worker_autoscaler": (IGNORED, "no pluggable autoscaler class"),
    "worker_consumer": (IGNORED, "no pluggable consumer class"),
    "worker_timer": (IGNORED, "no pluggable timer class"),
    # -- events and remote control
    "event_queue_expires": (IGNORED, "events live in the broker's bounded log (events_max_count/age)"),
    "event_queue_ttl": (IGNORED, "events live in the broker's bounded log (events_max_count/age)"),
    "event_queue_prefix": (IGNORED, "one event log per broker"),
    "event_exchange": (IGNORED, "no exchanges"),
    "event_serializer": (IGNORED, "events are JSON"),
    "control_queue_ttl": (IGNORED, "control commands live in the broker's log"),
    "control_queue_expires": (IGNORED, "control commands live in the broker's log"),
    "control_exchange": (IGNORED, "no exchanges"),
    # -- beat
    "beat_schedule": (HONOURED, "same"),
    "beat_scheduler": (MAPPED, "Conveyor's scheduler keeps run-time schedules in the broker"),
    "beat_schedule_filename": (IGNORED, "run state lives in the broker, shared by every beat"),
    "beat_sync_every": (IGNORED, "every run is recorded when sent"),
    "beat_max_loop_interval": (HONOURED, "same"),
    "beat_cron_starting_deadline": (IGNORED, "catch_up per entry decides what missed runs do"),
    # -- security
    "security_key": (IGNORED, "no message signing: secure the broker itself"),
    "security_certificate": (IGNORED, "no message signing: secure the broker itself"),
    "security_cert_store": (IGNORED, "no message signing: secure the broker itself"),
    "security_digest": (IGNORED, "no message signing: secure the broker itself"),
    "security_key_password": (IGNORED, "no message signing: secure the broker itself"),
}


# Values of ignored settings that ask for what Conveyor does anyway: no warning.
AGREEING = {
    "event_serializer": ("json",),
    "worker_hijack_root_logger": (False,),
    "worker_disable_rate_limits": (False,),
    "task_store_eager_result": (False,),
    "task_compression": (None,),
    "result_compression": (None,),
}


def ignored_note(name: str, value: object) -> str | None:
    """What Conveyor does instead, for a Celery setting it does not honour; None otherwise."""
    kind, note = CELERY_SETTINGS.get(name, ("", ""))
    if kind != IGNORED or any(value == ok for ok in AGREEING.get(name, ())):
        return None
    return note
