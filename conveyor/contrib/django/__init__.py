"""Conveyor in a Django project.

Nothing here is needed in INSTALLED_APPS for tasks to run: the worker, ``beat`` and
``run`` set Django up themselves (``setup.py``) when the app reads Django's settings
or ``DJANGO_SETTINGS_MODULE`` is set. This package imports nothing from Django at
import time, so importing it never configures Django by accident.
"""
