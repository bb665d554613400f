"""Threat-intel processing: feeds, observables, notifications and a nightly framework sync."""
