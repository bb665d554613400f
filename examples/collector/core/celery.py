import os

from conveyor import Conveyor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
app = Conveyor("core")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
