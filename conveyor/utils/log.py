"""``get_task_logger``: a logger whose records carry the running task's name and id.

Celery's twin path: ``from conveyor.utils.log import get_task_logger``. Each record
gets ``task_name`` and ``task_id`` attributes (``???`` outside a task), so a format
such as ``"%(task_name)s[%(task_id)s]: %(message)s"`` works in any handler, and the
worker's own format shows them too.
"""

from __future__ import annotations

import logging

from conveyor.task import current_request

__all__ = ["TASK_LOGGER", "get_logger", "get_task_logger"]

TASK_LOGGER = "conveyor.task"


class _TaskFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request()
        record.task_name = request.task if request is not None else "???"
        record.task_id = request.id if request is not None else "???"
        return True


_FIELDS = _TaskFields()


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task modules: ``logger = get_task_logger(__name__)``.

    It propagates to the ``conveyor.task`` logger (configure that one to route every
    task's logs), and its records carry ``task_name`` and ``task_id``.
    """
    if name in (TASK_LOGGER, "celery.task"):
        raise ValueError(f"{name!r} is the parent of task loggers: use get_task_logger(__name__)")
    logger = logging.getLogger(f"{TASK_LOGGER}.{name}")
    if _FIELDS not in logger.filters:
        logger.addFilter(_FIELDS)
    return logger


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger`` under Celery's name, for modules that import it from here."""
    return logging.getLogger(name)
