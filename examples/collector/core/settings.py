"""Settings of the collector example: platforms polled on their own intervals, on Django and PostgreSQL."""

import os
from pathlib import Path

from conveyor import crontab

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "conveyor.contrib.django",  # periodic tasks and task results in the admin
    "platforms",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "core.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("POSTGRES_DB", "collector"),
        "USER": os.environ.get("POSTGRES_USER", "postgres"),
        "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("POSTGRES_PORT", "5432"),
        "TEST": {"NAME": os.environ.get("POSTGRES_TEST_DB")},  # None: Django's test_collector
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TIME_ZONE = "Europe/Berlin"
USE_TZ = True
STATIC_URL = "static/"


# Conveyor reads the CELERY_* settings, as Celery does (core/celery.py).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "sqlite:///" + str(BASE_DIR / "conveyor.sqlite3"))
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ROUTES = {"platforms.tasks.poll_platform": "collect"}
CELERY_BEAT_SCHEDULE = {
    "collect-due-platforms": {
        "task": "platforms.tasks.collect_due_platforms",
        "schedule": crontab(minute="*/15"),  # a round every 15 minutes; each platform's interval decides
    },
}
