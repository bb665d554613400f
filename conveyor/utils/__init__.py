"""Helpers with Celery's import paths (``celery.utils.log`` -> ``conveyor.utils.log``)."""
