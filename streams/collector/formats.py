"""What the tools' analytics SDKs send, as Tally's contract: pure functions, one per API.

    Segment HTTP Tracking API (RudderStack speaks it too): track, page, screen, identify, batch
    Amplitude HTTP V2 API: {"api_key", "events": [...]}; `$identify` events set user properties
    PostHog capture API: one event, or {"api_key", "batch": [...]}; `$identify` sets person properties

Every event keeps the id its SDK made (messageId, insert_id, uuid) as `event_id`, so an SDK's
retry of a batch collapses in ClickHouse; its timestamp as event time; its properties as the
properties map. People's traits (title or role, team, email, flags) become `UserProfile` updates
for the profile join. `BadInput` says, as the original API would, why a body can never succeed.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from streams.contract import SCHEMA_VERSION, UserAction, UserProfile, new_event_id
from streams.producer.arguments import property_values

MAX_EVENTS_PER_BODY = 2_000  # Amplitude's own limit per batch; Segment's is by size (500 KB)


class BadInput(ValueError):
    """The body or one of its events can never be taken; the message says why."""


@dataclass
class Accepted:
    """What one request body turns into."""
    actions: list[UserAction] = field(default_factory=list)
    profiles: list[UserProfile] = field(default_factory=list)


# ---- shared ----------------------------------------------------------------------------------

def epoch_ms(value: Any, now_ms: int) -> int:
    """ISO-8601 text or epoch milliseconds (as number or digits) to epoch ms; now when absent."""
    if value is None or value == "":
        return now_ms
    if isinstance(value, bool):
        raise BadInput(f"timestamp {value!r} is not a time")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f"timestamp {value!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return int(parsed.timestamp() * 1000)
    raise BadInput(f"timestamp {value!r} is not a time")


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be an object")
    return value


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)


def _action(app: str, command: str, user: str, event_id: str, start_ms: int, properties: dict,
            **fields: str) -> UserAction:
    if not command:
        raise BadInput("an event has no name")
    if not user:
        raise BadInput(f"event {command!r} has no user (userId, anonymousId, user_id, device_id or distinct_id)")
    action = UserAction(app=app, command=command, user=user, event_id=event_id or new_event_id(start_ms),
                        start_epoch_ms=start_ms, end_epoch_ms=start_ms, schema_version=SCHEMA_VERSION,
                        **{k: v for k, v in fields.items() if v})
    action.properties.update(property_values(properties))
    return action


_TITLE_KEYS = ("title", "role", "job_title", "jobTitle")
_TEAM_KEYS = ("team", "department")
_FLAG_KEYS = ("ab_flags", "flags", "experiments")


def profile_from_traits(user: str, traits: dict, updated_ms: int) -> UserProfile | None:
    """A profile update from a person's traits; None when they name nothing the join uses."""
    traits = _object(traits, "traits")
    title = next((traits[k] for k in _TITLE_KEYS if traits.get(k)), "")
    team = next((traits[k] for k in _TEAM_KEYS if traits.get(k)), "")
    flags = next((traits[k] for k in _FLAG_KEYS if isinstance(traits.get(k), dict)), {})
    email = traits.get("email") or ""
    if not (title or team or flags or email):
        return None
    return UserProfile(user=user, email=_text(email), title=_text(title), team=_text(team),
                       ab_flags={str(k): _text(v) for k, v in flags.items()}, updated_epoch_ms=updated_ms)


# ---- Segment / RudderStack -------------------------------------------------------------------

SEGMENT_TYPES = ("track", "page", "screen", "identify")


def segment_body(body: Any, app: str, kind: str | None = None, now_ms: int | None = None) -> Accepted:
    """A Segment body: one call of `kind` (the path: /v1/track ...) or {"batch": [...]} (/v1/batch)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    body = _object(body, "the body")
    calls = body.get("batch") if kind in (None, "batch") else [{**body, "type": body.get("type") or kind}]
    if not isinstance(calls, list):
        raise BadInput("expected {\"batch\": [...]}")
    if len(calls) > MAX_EVENTS_PER_BODY:
        raise BadInput(f"{len(calls)} calls in one body; at most {MAX_EVENTS_PER_BODY}")
    accepted = Accepted()
    for call in calls:
        segment_call(_object(call, "a call"), app, now_ms, accepted)
    return accepted


def segment_call(call: dict, app: str, now_ms: int, into: Accepted) -> None:
    kind = call.get("type")
    if kind not in SEGMENT_TYPES:
        if kind in ("group", "alias"):
            return  # accounts and id merges: nothing Tally counts
        raise BadInput(f"unknown call type {kind!r}; expected one of {', '.join(SEGMENT_TYPES)}")
    user = _text(call.get("userId") or call.get("anonymousId") or "")
    at = epoch_ms(call.get("timestamp") or call.get("originalTimestamp") or call.get("sentAt"), now_ms)
    context = _object(call.get("context"), "context")
    page = _object(context.get("page"), "context.page")
    if kind == "identify":  # RudderStack's SDKs put the traits in the context
        traits = {**_object(context.get("traits"), "context.traits"), **_object(call.get("traits"), "traits")}
        profile = profile_from_traits(user, traits, at)
        if not user:
            raise BadInput("identify has no userId or anonymousId")
        if profile is not None:
            into.profiles.append(profile)
        return
    properties = _object(call.get("properties"), "properties")
    if kind == "track":
        command = _text(call.get("event") or "")
        location = _text(page.get("url") or "")
    else:
        name = _text(call.get("name") or properties.get("name") or "")
        noun = "Page" if kind == "page" else "Screen"
        command = f"Viewed {name} {noun}" if name else f"Loaded a {noun}"
        location = _text(properties.get("url") or page.get("url") or "")
    into.actions.append(_action(app, command, user, _text(call.get("messageId") or ""), at, properties,
                                location=location, target_type="" if kind == "track" else kind,
                                label=_text(properties.get("title") or "") if kind != "track" else "",
                                session_id=_text(context.get("sessionId") or "")))


# ---- Amplitude ---------------------------------------------------------------------------------

def amplitude_body(body: Any, now_ms: int | None = None) -> tuple[str, list[dict]]:
    """(api_key, events) of an HTTP V2 body; BadInput as Amplitude answers 400."""
    body = _object(body, "the body")
    key, events = body.get("api_key"), body.get("events")
    if not isinstance(key, str) or not key:
        raise BadInput("Invalid API key")
    if not isinstance(events, list) or not events:
        raise BadInput("missing events")
    if len(events) > MAX_EVENTS_PER_BODY:
        raise BadInput(f"{len(events)} events in one body; at most {MAX_EVENTS_PER_BODY}")
    return key, events


def amplitude_events(events: list, app: str, now_ms: int | None = None) -> Accepted:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    accepted = Accepted()
    for event in events:
        event = _object(event, "an event")
        user = _text(event.get("user_id") or event.get("device_id") or "")
        at = epoch_ms(event.get("time"), now_ms)
        kind = _text(event.get("event_type") or "")
        user_properties = _object(event.get("user_properties"), "user_properties")
        if kind == "$identify":
            if not user:
                raise BadInput("$identify has no user_id or device_id")
            traits = {**_object(user_properties.get("$set"), "$set"),
                      **{k: v for k, v in user_properties.items() if not k.startswith("$")}}
            profile = profile_from_traits(user, traits, at)
            if profile is not None:
                accepted.profiles.append(profile)
            continue
        accepted.actions.append(_action(app, kind, user, _text(event.get("insert_id") or ""), at,
                                        _object(event.get("event_properties"), "event_properties"),
                                        session_id=_text(event.get("session_id") or "")))
    return accepted


# ---- PostHog -----------------------------------------------------------------------------------

def posthog_body(body: Any) -> tuple[str, list[dict]]:
    """(api_key, events) of a capture body: one event, a list, or {"batch": [...]}."""
    if isinstance(body, list):
        events, key = body, ""
    else:
        body = _object(body, "the body")
        events = body.get("batch") if "batch" in body else [body]
        key = body.get("api_key") or body.get("token") or ""
    if not isinstance(events, list):
        raise BadInput("batch must be a list")
    if len(events) > MAX_EVENTS_PER_BODY:
        raise BadInput(f"{len(events)} events in one body; at most {MAX_EVENTS_PER_BODY}")
    if not key:
        key = next((e.get("api_key") or _object(e.get("properties"), "properties").get("token") or ""
                    for e in events if isinstance(e, dict)), "")
    return _text(key), events


def posthog_events(events: list, app: str, now_ms: int | None = None) -> Accepted:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    accepted = Accepted()
    for event in events:
        event = _object(event, "an event")
        properties = dict(_object(event.get("properties"), "properties"))
        user = _text(event.get("distinct_id") or properties.pop("distinct_id", "") or "")
        at = epoch_ms(event.get("timestamp"), now_ms)
        name = _text(event.get("event") or "")
        person = {**_object(properties.pop("$set", None), "$set"), **_object(event.get("$set"), "$set")}
        if name == "$identify" or (person and name == "$set"):
            if not user:
                raise BadInput(f"{name} has no distinct_id")
            profile = profile_from_traits(user, person, at)
            if profile is not None:
                accepted.profiles.append(profile)
            continue
        properties.pop("token", None)
        properties.pop("api_key", None)
        accepted.actions.append(_action(app, name, user, _text(event.get("uuid") or ""), at, properties,
                                        location=_text(properties.get("$current_url") or ""),
                                        session_id=_text(properties.get("$session_id") or "")))
        if person:  # a capture that also sets the person's properties
            profile = profile_from_traits(user, person, at)
            if profile is not None:
                accepted.profiles.append(profile)
    return accepted
