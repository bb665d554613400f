"""Settings of the accounts example: Django on PostgreSQL, e-mail over SMTP, tasks on Conveyor."""

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
    "accounts",
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
        "NAME": os.environ.get("POSTGRES_DB", "accounts"),
        "USER": os.environ.get("POSTGRES_USER", "postgres"),
        "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("POSTGRES_PORT", "5432"),
        "TEST": {"NAME": os.environ.get("POSTGRES_TEST_DB")},  # None: Django's test_accounts
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TIME_ZONE = "Europe/Berlin"
USE_TZ = True
STATIC_URL = "static/"

# The mail server the tasks talk to; Django's SMTP backend.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
DEFAULT_FROM_EMAIL = "accounts@example.com"
SITE_URL = os.environ.get("SITE_URL", "http://localhost:8000")
ACCOUNT_ACTIVATION_DAYS = 7  # an account not activated by then is deleted by the nightly clean-up

# Conveyor reads the CELERY_* settings, as Celery does (core/celery.py).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "sqlite:///" + str(BASE_DIR / "conveyor.sqlite3"))
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ROUTES = {"accounts.tasks.send_*": "email"}
CELERY_BEAT_SCHEDULE = {
    "delete-expired-accounts": {
        "task": "accounts.tasks.delete_expired_accounts",
        "schedule": crontab(minute=30, hour=3),  # every night at 03:30, Berlin time
    },
}
