from django.contrib import admin

from platforms.models import Collection, Platform


@admin.register(Platform)
class PlatformAdmin(admin.ModelAdmin):
    list_display = ["name", "url", "interval_minutes", "enabled", "last_polled_at"]
    list_editable = ["interval_minutes", "enabled"]


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["platform", "round_at", "items", "collected_at"]
    list_filter = ["platform"]
