"""``conveyor migrate [--check]``: create or upgrade the broker's tables ahead of time.

Only the PostgreSQL broker and result store have a schema to manage (their tables
are created at first use anyway; this lets a deploy step do it, or check it, before
any worker starts). On Redis it moves queues kept in the key layout from before
queue keys had hash tags into the current one (docs/brokers.md, "Upgrading").
SQLite and memory need nothing.
"""

from __future__ import annotations

import click

from conveyor.brokers.base import mask_url
from conveyor.cli.context import CliState, pass_state, shared_options


def _redis_migrate(url: str, check: bool) -> bool:
    """Move or check a Redis broker's queues; True when some are still in the old layout."""
    from conveyor.brokers.redis import RedisBroker

    broker = RedisBroker(url)
    try:
        where = mask_url(url)
        if check:
            old = broker.old_layout_keys()
            if old:
                click.echo(f"{where}: {old} key(s) in the layout before hash tags; run `conveyor migrate`")
                return True
            click.echo(f"{where}: key layout up to date")
            return False
        moved = broker.migrate_layout()
        click.echo(f"{where}: moved {moved} key(s); key layout up to date")
        return False
    finally:
        broker.close()


def _postgres_urls(state: CliState) -> list[str]:
    app = state.get_app()
    urls = [app.conf.broker_url]
    backend = app.conf.result_backend
    if isinstance(backend, str) and backend and backend != app.conf.broker_url:
        urls.append(backend)
    return [url for url in urls if url.split(":", 1)[0].lower() in ("postgresql", "postgres")]


@click.command()
@click.option("--check", is_flag=True, help="Only report; exit 1 when the schema is missing or out of date.")
@shared_options(envvars=False)
@pass_state
def migrate(state: CliState, check: bool) -> None:
    """Create or upgrade Conveyor's tables in the PostgreSQL schema, or move a Redis broker's queues
    into the current key layout (nothing to do on other brokers)."""
    broker_url = state.get_app().conf.broker_url
    on_redis = broker_url.split(":", 1)[0].lower() in (
        "redis",
        "rediss",
        "redis+sentinel",
        "redis+cluster",
        "rediss+cluster",
    )
    behind = on_redis and _redis_migrate(broker_url, check)
    urls = _postgres_urls(state)
    if not urls and on_redis:
        if behind:
            raise SystemExit(1)
        return
    if not urls:
        click.echo("nothing to migrate: only a postgresql:// broker or result backend has a schema")
        return
    from conveyor import _postgres
    from conveyor.backends.postgres import SCHEMA as RESULT_SCHEMA
    from conveyor.backends.postgres import TABLES as RESULT_TABLES
    from conveyor.brokers.postgres import SCHEMA, TABLES
    from conveyor.brokers.postgres_store import STORE_SCHEMA, STORE_TABLES

    for url in urls:
        db = _postgres.Database(
            url,
            schema=SCHEMA + STORE_SCHEMA + RESULT_SCHEMA,
            tables=TABLES + STORE_TABLES + RESULT_TABLES,
            what="broker",
        )
        where = f"{mask_url(url)} schema {db.schema!r}"
        version = db.schema_version()
        if version is not None and version > _postgres.SCHEMA_VERSION:
            raise click.ClickException(
                f"{where} has schema version {version}, newer than this Conveyor understands "
                f"({_postgres.SCHEMA_VERSION}): upgrade Conveyor"
            )
        if check:
            if version == _postgres.SCHEMA_VERSION:
                click.echo(f"{where}: schema version {version}, up to date")
            else:
                behind = True
                found = "no Conveyor tables" if version is None else f"schema version {version}"
                click.echo(f"{where}: {found}; run `conveyor migrate` (version {_postgres.SCHEMA_VERSION})")
            continue
        db.migrate()
        click.echo(f"{where}: schema version {_postgres.SCHEMA_VERSION}, up to date")
    if behind:
        raise SystemExit(1)
