import datetime as dt

from django.db import models

# Beat starts a round every 15 minutes (core/settings.py); a round that starts a few
# seconds late must not push a platform whose interval is up to the round after.
ROUND = dt.timedelta(minutes=15)


class Platform(models.Model):
    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(help_text="Answers GET with a JSON list of items.")
    interval_minutes = models.PositiveIntegerField(default=60, help_text="Poll at most this often.")
    enabled = models.BooleanField(default=True)
    last_polled_at = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self) -> str:
        return self.name

    def is_due(self, round_at: dt.datetime) -> bool:
        if self.last_polled_at is None:
            return True
        return round_at - self.last_polled_at >= dt.timedelta(minutes=self.interval_minutes) - ROUND / 2


class Collection(models.Model):
    """What one round got from one platform."""

    platform = models.ForeignKey(Platform, on_delete=models.CASCADE, related_name="collections")
    round_at = models.DateTimeField()
    items = models.PositiveIntegerField()
    collected_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # A poll delivered twice (at-least-once) stores its round once.
        constraints = [
            models.UniqueConstraint(fields=["platform", "round_at"], name="one_collection_per_round")
        ]
