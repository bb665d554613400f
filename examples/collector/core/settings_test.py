"""`python manage.py test --settings core.settings_test`: the project's settings with a
broker file of the test run's own."""

import os
import tempfile

from .settings import *  # noqa: F403

# setdefault: a `conveyor` command the tests start inherits the same broker file.
CELERY_BROKER_URL = os.environ.setdefault(
    "CELERY_BROKER_URL",
    "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="collector-"), "conveyor.sqlite3"),
)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
