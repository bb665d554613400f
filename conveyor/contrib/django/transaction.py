"""Sending after the surrounding Django transaction commits (``Task.delay_on_commit``).

A task sent inside ``transaction.atomic()`` can reach a worker before the transaction
commits: it then reads rows that are not there yet (``Order.DoesNotExist``), or acts on
a transaction that is later rolled back. Django's ``transaction.on_commit`` runs the
send after COMMIT, drops it on rollback (of the transaction, or of the savepoint it
was registered in), and runs it at once when no transaction is open.

Where Django is not in use (not installed, or neither configured nor named by
``DJANGO_SETTINGS_MODULE``) there is no transaction to wait for: the send happens at
once, so the same task code runs in scripts and other frameworks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


def django_in_use() -> bool:
    """Is this process a configured Django project? Never imports Django to find out."""
    conf = sys.modules.get("django.conf")
    if conf is not None and conf.settings.configured:
        return True
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return False
    try:
        import django.db  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def on_commit(send: Callable[[], Any]) -> None:
    """Call ``send`` when the current transaction commits; at once outside Django."""
    if not django_in_use():
        send()
        return
    from django.db import transaction  # type: ignore[import-not-found,import-untyped,unused-ignore]

    transaction.on_commit(send)
