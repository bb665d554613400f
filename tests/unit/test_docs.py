from __future__ import annotations

from pathlib import Path

from conveyor.config import SETTINGS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_configuration_doc_lists_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in text or f"`{s.env}`" not in text]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_migration_doc_lists_every_celery_setting() -> None:
    from conveyor.celery_settings import CELERY_SETTINGS

    text = (DOCS / "migrating-from-celery.md").read_text()
    missing = [name for name in CELERY_SETTINGS if f"| `{name}` |" not in text]
    assert not missing, f"docs/migrating-from-celery.md does not list {missing}"
