"""The intel package run as its README says, against faked external services."""

import datetime as dt
from collections import Counter

from conftest import Intel
from intel.feeds import fetch_feed
from intel.frameworks import sync_framework
from intel.notifications import notify_analysts

from conveyor import crontab
from conveyor.testing import wait_for

FEED = """# abuse.example daily list
203.0.113.7
198.51.100.23
evil-updates.example
login-secure.example
cdn.example
44d88612fea8a8f36de82e1278abb02f44d88612fea8a8f36de82e1278abb02f
e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
192.0.2.1      # documentation range, still listed
not an indicator
203.0.113.7
"""
BAD = {
    "203.0.113.7",
    "evil-updates.example",
    "44d88612fea8a8f36de82e1278abb02f44d88612fea8a8f36de82e1278abb02f",
}


def test_each_queue_has_its_own_worker(intel: Intel) -> None:
    def all_four() -> dict:
        stats = intel.app.control.inspect(timeout=2).stats() or {}
        return stats if len(stats) >= 4 else {}

    stats = wait_for(all_four, timeout=30, message="not every worker answered")
    assert sorted(s["queues"] for s in stats.values()) == [
        ["default"],
        ["feeds"],
        ["notifications"],
        ["observables"],
    ]


def test_a_feed_fans_out_to_enrichment_in_a_chord_and_alerts_on_the_malicious(intel: Intel) -> None:
    intel.services.feeds["abuse"] = FEED
    intel.services.bad.update(BAD)
    fetched = fetch_feed.delay("abuse", f"{intel.services.url}/feeds/abuse")
    outcome = fetched.get(timeout=30)
    assert outcome["new"] == 8  # 9 indicator lines, one repeated; the junk line skipped
    summary = intel.app.AsyncResult(outcome["summary"])
    assert summary.get(timeout=30) == {"feed": "abuse", "new": 8, "malicious": 3}
    # The callback ran once, after every enrichment: each indicator was looked up once.
    assert Counter(intel.services.lookups).most_common(1)[0][1] == 1
    assert len(intel.query("SELECT value FROM enrichments")) == 8
    wait_for(lambda: len(intel.services.alerts) >= 3, timeout=30, message="the alerts were not sent")
    alerted = Counter(alert["value"] for _, alert in intel.services.alerts if alert["feed"] == "abuse")
    assert alerted == Counter({value: 1 for value in BAD})
    assert intel.query("SELECT feed, new, malicious FROM feed_runs") == [("abuse", 8, 3)]
    # Fetched again: nothing new, nothing enriched or alerted twice.
    assert fetch_feed.delay("abuse", f"{intel.services.url}/feeds/abuse").get(timeout=30) == {
        "new": 0,
        "summary": None,
    }
    assert len(intel.services.lookups) == 8


def test_notifications_keep_to_the_external_apis_rate_limit(intel: Intel) -> None:
    sent = notify_analysts.map([("burst", f"198.51.100.{i}", "ipv4", 95) for i in range(10)])
    assert [r.get(timeout=30) for r in sent] == [200] * 10
    stamps = sorted(t for t, alert in intel.services.alerts if alert["feed"] == "burst")
    assert len(stamps) == 10
    # rate_limit="5/s" across every worker: slots 0.2 s apart. Counted per 1 s window,
    # because each post leaves a moment after its slot, a moment that varies with load.
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert busiest <= 5 + 2, stamps
    assert stamps[-1] - stamps[0] >= 9 * 0.2 - 0.5, stamps


def test_the_nightly_framework_sync_upserts_techniques(intel: Intel) -> None:
    intel.services.framework = {
        "techniques": [
            {"id": "T1566", "name": "Phishing", "tactic": "initial-access"},
            {"id": "T1059", "name": "Command and Scripting Interpreter", "tactic": "execution"},
        ]
    }
    assert sync_framework.delay().get(timeout=30) == 2
    intel.services.framework["techniques"][0]["name"] = "Phishing (renamed)"
    assert sync_framework.delay().get(timeout=30) == 2
    assert intel.query("SELECT id, name FROM techniques ORDER BY id") == [
        ("T1059", "Command and Scripting Interpreter"),
        ("T1566", "Phishing (renamed)"),
    ]


def test_beat_runs_the_framework_sync_every_night_at_two(intel: Intel) -> None:
    entry = intel.app.conf.beat_schedule["sync-attack-framework"]
    assert entry["task"] == sync_framework.name
    assert entry["schedule"] == crontab(minute=0, hour=2)
    after = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.timezone.utc)  # just ran: the next is tomorrow
    assert entry["schedule"].next_run(after, tz="UTC") == dt.datetime(
        2026, 12, 8, 2, 0, tzinfo=dt.timezone.utc
    )
