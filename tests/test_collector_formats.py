"""The collector's mappings, pure: what Segment/RudderStack, Amplitude and PostHog send -> UserAction
and UserProfile, and the bodies each API refuses (as it would)."""
from __future__ import annotations

import pytest

from streams.collector import formats

NOW = 1_764_000_000_000
ISO = "2026-11-24T16:00:00.250Z"
ISO_MS = 1_795_536_000_250


def test_epoch_ms_reads_iso_and_milliseconds():
    assert formats.epoch_ms(ISO, NOW) == ISO_MS
    assert formats.epoch_ms("2026-11-24T17:00:00.250+01:00", NOW) == ISO_MS
    assert formats.epoch_ms("2026-11-24T16:00:00.250", NOW) == ISO_MS  # no zone: UTC
    assert formats.epoch_ms(ISO_MS, NOW) == formats.epoch_ms(str(ISO_MS), NOW) == ISO_MS
    assert formats.epoch_ms(None, NOW) == NOW
    with pytest.raises(formats.BadInput, match="not ISO-8601"):
        formats.epoch_ms("yesterday", NOW)


def test_segment_track_page_screen_and_identify():
    body = {"batch": [
        {"type": "track", "event": "Dashboard Viewed", "userId": "ada@example.com", "messageId": "m-1",
         "timestamp": ISO, "properties": {"dashboard": "revenue", "tiles": 12}, "context": {"page": {"url": "https://x/d"}}},
        {"type": "page", "name": "Pricing", "anonymousId": "anon-7", "messageId": "m-2",
         "properties": {"url": "https://x/pricing", "title": "Pricing"}},
        {"type": "screen", "userId": "bob", "messageId": "m-3"},
        {"type": "identify", "userId": "ada@example.com", "traits": {"title": "Analyst", "team": "growth",
                                                                   "flags": {"new_nav": True}}},
        {"type": "group", "userId": "ada@example.com", "groupId": "acme"},
    ]}
    accepted = formats.segment_body(body, "lightdash", "batch", now_ms=NOW)
    track, page, screen = accepted.actions
    assert (track.app, track.command, track.user, track.event_id, track.start_epoch_ms) == (
        "lightdash", "Dashboard Viewed", "ada@example.com", "m-1", ISO_MS)
    assert dict(track.properties) == {"dashboard": "revenue", "tiles": "12"} and track.location == "https://x/d"
    assert (page.command, page.user, page.location, page.label, page.target_type) == (
        "Viewed Pricing Page", "anon-7", "https://x/pricing", "Pricing", "page")
    assert (screen.command, screen.start_epoch_ms) == ("Loaded a Screen", NOW)
    (profile,) = accepted.profiles
    assert (profile.user, profile.title, profile.team, dict(profile.ab_flags)) == (
        "ada@example.com", "Analyst", "growth", {"new_nav": "true"})


def test_segment_single_calls_take_their_type_from_the_path():
    accepted = formats.segment_body({"event": "Signed In", "userId": "u1"}, "bi", "track", now_ms=NOW)
    assert [a.command for a in accepted.actions] == ["Signed In"]
    assert accepted.actions[0].event_id  # the SDK sent none: the collector makes one


@pytest.mark.parametrize("body,kind,says", [
    ([1, 2], "batch", "the body must be an object"),
    ({"batch": "x"}, "batch", "expected {\"batch\": [...]}"),
    ({"batch": [{"type": "bogus", "userId": "u"}]}, "batch", "unknown call type 'bogus'"),
    ({"batch": [{"type": "track", "userId": "u"}]}, "batch", "an event has no name"),
    ({"batch": [{"type": "track", "event": "X"}]}, "batch", "event 'X' has no user"),
    ({"event": "X", "userId": "u", "properties": [1]}, "track", "properties must be an object"),
    ({"batch": [{"type": "track", "event": "X", "userId": "u"}] * 2001}, "batch", "2001 calls in one body"),
])
def test_segment_refuses_what_can_never_succeed(body, kind, says):
    with pytest.raises(formats.BadInput, match=says.replace("[", r"\[").replace("{", r"\{")):
        formats.segment_body(body, "bi", kind, now_ms=NOW)


def test_amplitude_events_and_identify():
    key, events = formats.amplitude_body({"api_key": "amp-1", "events": [
        {"event_type": "search.submitted", "user_id": "ada", "time": ISO_MS, "insert_id": "i-1",
         "event_properties": {"query": "repo:acme"}, "session_id": 1764000000000},
        {"event_type": "$identify", "user_id": "ada", "user_properties": {"$set": {"role": "Engineer", "team": "search"}}},
        {"event_type": "page.viewed", "device_id": "dev-9"},
    ]})
    assert key == "amp-1"
    accepted = formats.amplitude_events(events, "code-search", now_ms=NOW)
    search, page = accepted.actions
    assert (search.command, search.user, search.event_id, search.start_epoch_ms, dict(search.properties),
            search.session_id) == ("search.submitted", "ada", "i-1", ISO_MS, {"query": "repo:acme"}, "1764000000000")
    assert (page.user, page.start_epoch_ms) == ("dev-9", NOW)
    assert [(p.user, p.title, p.team) for p in accepted.profiles] == [("ada", "Engineer", "search")]


@pytest.mark.parametrize("body,says", [
    ({"events": [{"event_type": "x", "user_id": "u"}]}, "Invalid API key"),
    ({"api_key": "k", "events": []}, "missing events"),
    ({"api_key": "k"}, "missing events"),
])
def test_amplitude_refuses_as_amplitude_does(body, says):
    with pytest.raises(formats.BadInput, match=says):
        formats.amplitude_body(body)


def test_posthog_capture_batch_and_person_properties():
    key, events = formats.posthog_body({"api_key": "phc-1", "batch": [
        {"event": "notebook.run", "distinct_id": "ada", "uuid": "0191-u", "timestamp": ISO,
         "properties": {"cells": 3, "$current_url": "https://nb/1", "$session_id": "s-1", "token": "phc-1"}},
        {"event": "$set", "distinct_id": "ada", "$set": {"title": "Data Scientist"}},
        {"event": "$identify", "distinct_id": "bob", "properties": {"$set": {"team": "ml"}}},
    ]})
    assert key == "phc-1"
    accepted = formats.posthog_events(events, "notebooks", now_ms=NOW)
    (run,) = accepted.actions
    assert (run.command, run.user, run.event_id, run.start_epoch_ms, run.location, run.session_id) == (
        "notebook.run", "ada", "0191-u", ISO_MS, "https://nb/1", "s-1")
    assert "token" not in run.properties and run.properties["cells"] == "3"
    assert sorted((p.user, p.title, p.team) for p in accepted.profiles) == [("ada", "Data Scientist", ""),
                                                                            ("bob", "", "ml")]


def test_posthog_single_event_with_the_key_in_its_properties():
    key, events = formats.posthog_body({"event": "x", "distinct_id": "u", "properties": {"token": "phc-2"}})
    assert key == "phc-2" and len(formats.posthog_events(events, "nb", now_ms=NOW).actions) == 1
