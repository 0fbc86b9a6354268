"""`tally collect`: the HTTP collector. Stateless: run several behind a load balancer.

    POST /v1/track /v1/page /v1/screen /v1/identify /v1/batch   Segment / RudderStack (basic auth: write key)
    POST /2/httpapi  /batch                                      Amplitude HTTP V2 (api_key in the body)
    POST /capture/  /batch/  /i/v0/e/  /e/                       PostHog (api_key in the body)
    GET  /healthz

Acknowledged means kept: 200 only once Kafka acknowledged every event of the body (acks=all,
idempotent producer), packed into one envelope per partition; 4xx with the reason for a body
that can never succeed, as the original API answers, so SDKs don't retry it; 503 with
Retry-After while Kafka is away; 413 for a body too big, 429 past a key's rate. Bodies are
never logged (the pipeline scrubs them; the collector does not keep them).
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import time
import zlib
from dataclasses import dataclass

from aiohttp import web

from streams.collector import formats
from streams.collector.keys import Keys
from streams.contract import UserAction, UserProfile
from streams.producer.envelopes import pack_envelopes

log = logging.getLogger("tally.collector")

MAX_BODY_BYTES = 5 * 1024 * 1024          # a compressed body, at most
MAX_DECOMPRESSED_BYTES = 20 * 1024 * 1024  # what it may inflate to
ENVELOPE_MAX_BYTES = 900_000
RETRY_AFTER_S = 5


class KafkaAway(Exception):
    """Kafka did not acknowledge in time: tell the client to come back."""


class Publisher:
    """One idempotent producer (acks=all) for the collector's lifetime, started on first use."""

    def __init__(self, bootstrap: str, actions_topic: str, profiles_topic: str, timeout_s: float = 10.0,
                 **producer_config) -> None:
        self.bootstrap, self.actions_topic, self.profiles_topic = bootstrap, actions_topic, profiles_topic
        self.timeout_s, self.producer_config = timeout_s, producer_config
        self._producer = None
        self._partitions: int | None = None
        self._starting = asyncio.Lock()

    async def _ready(self):
        from aiokafka import AIOKafkaProducer
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                            linger_ms=5, max_request_size=4 * 1024 * 1024,
                                            request_timeout_ms=int(self.timeout_s * 1000), **self.producer_config)
                try:
                    await asyncio.wait_for(producer.start(), self.timeout_s)
                    self._partitions = len(await producer.partitions_for(self.actions_topic))
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def publish(self, actions: list[UserAction], profiles: list[UserProfile]) -> None:
        """Return once Kafka acknowledged all of them; KafkaAway if it did not in time."""
        try:
            producer = await self._ready()
            serialized = [(a.user.encode("utf-8", "surrogatepass"), a.SerializeToString(), None) for a in actions]
            futures = []
            for key, value, partition, headers, _ in (pack_envelopes(serialized, self._partitions, ENVELOPE_MAX_BYTES)
                                                      if serialized else []):
                futures.append(await producer.send(self.actions_topic, value, key=key, partition=partition,
                                                   headers=headers))
            for profile in profiles:
                futures.append(await producer.send(self.profiles_topic, profile.SerializeToString(),
                                                   key=profile.user.encode("utf-8", "surrogatepass")))
            await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s)
        except (asyncio.TimeoutError, OSError) as exc:
            await self._reset()
            raise KafkaAway(str(exc) or type(exc).__name__) from None
        except Exception as exc:
            from aiokafka.errors import KafkaError
            if isinstance(exc, KafkaError):
                await self._reset()
                raise KafkaAway(str(exc) or type(exc).__name__) from None
            raise

    async def _reset(self) -> None:
        """After a failure, start afresh on the next request (a new connection, metadata and sequence)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), self.timeout_s)
            except Exception:
                pass

    async def close(self) -> None:
        await self._reset()


@dataclass
class RateLimit:
    """Events per second per key, with a second's burst; 0 = no limit."""
    per_second: float = 0.0

    def __post_init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, events: int) -> bool:
        if self.per_second <= 0:
            return True
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.per_second, now))
        tokens = min(self.per_second, tokens + (now - at) * self.per_second)
        if events > tokens:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - events, now)
        return True


# ---- answers, as each API gives them -----------------------------------------------------------

def segment_answer(status: int, message: str = "", events: int = 0, size: int = 0) -> web.Response:
    body = {"success": True} if status == 200 else {"success": False, "message": message}
    return web.json_response(body, status=status)


def amplitude_answer(status: int, message: str = "", events: int = 0, size: int = 0) -> web.Response:
    body = ({"code": 200, "events_ingested": events, "payload_size_bytes": size,
             "server_upload_time": int(time.time() * 1000)} if status == 200 else {"code": status, "error": message})
    return web.json_response(body, status=status)


def posthog_answer(status: int, message: str = "", events: int = 0, size: int = 0) -> web.Response:
    body = {"status": 1} if status == 200 else {"type": "validation_error" if status == 400 else "error",
                                                "code": "invalid_input" if status == 400 else str(status),
                                                "detail": message}
    return web.json_response(body, status=status)


# ---- the app -----------------------------------------------------------------------------------

def _decoded(raw: bytes) -> object:
    """The JSON a body holds; BadInput otherwise. aiohttp has already inflated a body sent with
    `Content-Encoding: gzip` (within the size limit); a gzip body without that header (PostHog's
    browser library says `?compression=gzip-js` instead) is inflated here."""
    try:
        if raw[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = inflater.decompress(raw, MAX_DECOMPRESSED_BYTES)
            if inflater.unconsumed_tail:
                raise _TooBig()
    except (zlib.error, gzip.BadGzipFile, EOFError):
        raise formats.BadInput("the body is not valid gzip") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise formats.BadInput("the body is not JSON") from None


class _TooBig(Exception):
    pass


def _basic_auth_key(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            return base64.b64decode(header[6:]).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


def make_app(publisher: Publisher, keys: Keys, rate: RateLimit | None = None) -> web.Application:
    rate = rate or RateLimit()
    stats = {"accepted_events": 0, "accepted_profiles": 0, "refused_bodies": 0, "kafka_away": 0}

    async def take(request: web.Request, parse, answer):
        """Read, parse (-> the key, and how to build the events for its app), check the key, publish;
        answer as the API does."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            stats["refused_bodies"] += 1
            return answer(413, f"body over {MAX_BODY_BYTES} bytes")
        try:
            body = _decoded(raw)
            key, build = parse(request, body)
            app = keys.app_for(key)
            if app is None:
                stats["refused_bodies"] += 1
                return answer(401, "Invalid API key" if key else "missing write key / api key")
            accepted = build(app)
        except _TooBig:
            stats["refused_bodies"] += 1
            return answer(413, f"body inflates past {MAX_DECOMPRESSED_BYTES} bytes")
        except formats.BadInput as exc:
            stats["refused_bodies"] += 1
            return answer(400, str(exc))
        count = len(accepted.actions) + len(accepted.profiles)
        if not rate.take(key, count):
            response = answer(429, f"over {rate.per_second:g} events/s for this key")
            response.headers["Retry-After"] = "1"
            return response
        try:
            await publisher.publish(accepted.actions, accepted.profiles)
        except KafkaAway as exc:
            stats["kafka_away"] += 1
            log.warning("Kafka did not acknowledge (%s): answering 503", exc)
            response = answer(503, "Kafka is not acknowledging; retry later")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        stats["accepted_events"] += len(accepted.actions)
        stats["accepted_profiles"] += len(accepted.profiles)
        return answer(200, "", len(accepted.actions), len(raw))

    def segment(kind: str):
        def parse(request, body):
            key = _basic_auth_key(request) or (body.get("writeKey") if isinstance(body, dict) else "") or ""
            return str(key), lambda app: formats.segment_body(body, app, kind)
        return lambda request: take(request, parse, segment_answer)

    def amplitude(request):
        def parse(_, body):
            key, events = formats.amplitude_body(body)
            return key, lambda app: formats.amplitude_events(events, app)
        return take(request, parse, amplitude_answer)

    def posthog(request):
        def parse(_, body):
            key, events = formats.posthog_body(body)
            return key, lambda app: formats.posthog_events(events, app)
        return take(request, parse, posthog_answer)

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = request.headers.get("Origin", "")
        if request.method == "OPTIONS":
            response = web.Response(status=204)
        else:
            response = await handler(request)
        if origin and keys.allows_origin(origin):
            response.headers.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                                     "Access-Control-Allow-Methods": "POST, OPTIONS",
                                     "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding"})
        return response

    async def healthz(_):
        return web.json_response({"ok": True, **stats})

    async def close(_app):
        await publisher.close()

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[cors])
    for kind in (*formats.SEGMENT_TYPES, "batch", "group", "alias"):
        app.router.add_post(f"/v1/{kind}", segment(kind))
    for path in ("/2/httpapi", "/batch"):
        app.router.add_post(path, amplitude)
    for path in ("/capture/", "/batch/", "/i/v0/e/", "/e/", "/capture", "/i/v0/e"):
        app.router.add_post(path, posthog)
    app.router.add_route("OPTIONS", "/{tail:.*}", lambda r: web.Response(status=204))
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(close)
    app["stats"] = stats
    return app
