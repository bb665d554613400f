"""`python manage.py test --settings core.settings_test`: the project's settings, with
a broker of the test run's own and retries that wait tenths of a second, not minutes."""

import os
import tempfile

from .settings import *  # noqa: F403

# setdefault: a `conveyor` command the tests start inherits the same broker file.
CELERY_BROKER_URL = os.environ.setdefault(
    "CELERY_BROKER_URL", "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="accounts-"), "conveyor.sqlite3")
)
# Celery's task_annotations: the same tasks, with backoff 0.1 s, 0.2 s, 0.4 s ... and no jitter.
CELERY_TASK_ANNOTATIONS = {"*": {"retry_backoff": 0.1, "retry_jitter": False}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # 1,000 users in a blink
