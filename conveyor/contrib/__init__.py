"""Integrations with other frameworks: ``conveyor.contrib.django``, ``conveyor.contrib.pytest``."""
