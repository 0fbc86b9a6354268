"""`tally collect` with the real analytics SDKs: segment-analytics-python, rudder-sdk-python,
amplitude-analytics and posthog, pointed at a collector process that publishes to the session's
broker, consumed by a real worker; and the answers a collector owes bad bodies, wrong keys,
oversized batches, a client over its rate, a browser, and a broker that is not there."""
from __future__ import annotations

import gzip
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import ROOT, WorkerProcess, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

KEYS = {"seg-write-key": "lightdash", "rudder-write-key": "bi", "amp-api-key": "code-search", "phc-key": "notebooks"}


def stored_user(user: str) -> str:
    """The pseudonym the worker stores for `user` (the suite's key, as the worker has it)."""
    from streams.stages.scrub import Scrubber, load_policy
    return Scrubber(load_policy(hmac_key=os.environ.get("TALLY_HMAC_KEY", ""))).scrub_user(user)


class Collector:
    def __init__(self, tmp_path, bootstrap: str, prefix: str, *extra: str) -> None:
        keys = tmp_path / f"keys-{uuid.uuid4().hex[:6]}.yaml"
        keys.write_text("keys:\n" + "".join(f"  {k}: {v}\n" for k, v in KEYS.items())
                        + "origins: [\"https://lightdash.example\"]\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "collect", "--port", str(self.port), "--keys", str(keys),
             "--bootstrap", bootstrap, "--topic-prefix", prefix, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, self.process.stdout.read()
                time.sleep(0.2)

    def post(self, path: str, body, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read()), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/healthz", timeout=30) as answer:
            return json.loads(answer.read())

    def stop(self) -> str:
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out


@pytest.fixture(scope="module")
def pipeline(bootstrap, tmp_path_factory):
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    worker = WorkerProcess(tmp_path_factory.mktemp("collector-worker"), bootstrap, prefix, f"tally-{prefix[:-1]}", [])
    collector = None
    try:
        worker.start().wait_assigned()
        collector = Collector(tmp_path_factory.mktemp("collector"), bootstrap, prefix)
        yield worker, collector
    finally:
        log = collector.stop() if collector else ""
        worker.stop()
        assert "seg-write-key" not in log and "Dashboard Viewed" not in log  # bodies are never logged


def rows_of(worker, app: str, expected: int, timeout: float = 60.0) -> list[list]:
    deadline = time.monotonic() + timeout
    while True:
        rows = worker.query(f"SELECT user, command, event_name, event_id, properties, location, app "
                            f"FROM user_actions FINAL WHERE app = '{app}' ORDER BY event_id")
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def profile_of(worker, user: str, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        rows = worker.query(f"SELECT title, team FROM user_profiles FINAL WHERE user = '{stored_user(user)}'")
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


# ---- the SDKs -----------------------------------------------------------------------------------

def test_segment_sdk_track_page_and_identify(pipeline):
    from segment.analytics import Client
    worker, collector = pipeline
    client = Client("seg-write-key", host=collector.url, sync_mode=True, gzip=True, max_retries=2)
    client.identify("ada@example.com", {"title": "Analyst", "team": "growth"})
    client.track("ada@example.com", "Dashboard Viewed", {"dashboard": "revenue"})
    client.page("ada@example.com", name="Explore", properties={"url": "https://lightdash.example/explore"})
    client.flush()
    rows = rows_of(worker, "lightdash", 2)
    assert sorted((r[0], r[1]) for r in rows) == [(stored_user("ada@example.com"), "Dashboard Viewed"),
                                                  (stored_user("ada@example.com"), "Viewed Explore Page")]
    track = next(r for r in rows if r[1] == "Dashboard Viewed")
    assert track[4]["dashboard"] == "revenue"
    assert profile_of(worker, "ada@example.com") == [["Analyst", "growth"]]


def test_rudderstack_sdk_to_the_data_plane_url(pipeline):
    import rudderstack.analytics as rudder
    worker, collector = pipeline
    client = rudder.Client("rudder-write-key", host=collector.url, sync_mode=True, max_retries=2)
    client.track("bob", "Chart Created", {"chart_type": "bar"})
    client.identify("bob", {"title": "Data Engineer"})
    client.flush()
    rows = rows_of(worker, "bi", 1)
    assert [(r[0], r[1], r[4]["chart_type"]) for r in rows] == [(stored_user("bob"), "Chart Created", "bar")]
    assert profile_of(worker, "bob") == [["Data Engineer", ""]]


def test_amplitude_sdk_track_and_identify(pipeline):
    from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify
    worker, collector = pipeline
    client = Amplitude("amp-api-key", Config(server_url=f"{collector.url}/2/httpapi", flush_queue_size=10,
                                             flush_interval_millis=200))
    client.track(BaseEvent("search.submitted", user_id="cy", event_properties={"query": "repo:acme lang:go"}))
    client.track(BaseEvent("repo.viewed", user_id="cy", event_properties={"repo": "acme/api"}))
    client.identify(Identify().set("title", "Software Engineer").set("team", "search"), EventOptions(user_id="cy"))
    client.flush()
    client.shutdown()
    rows = rows_of(worker, "code-search", 2)
    assert sorted((r[0], r[1]) for r in rows) == [(stored_user("cy"), "repo.viewed"),
                                                  (stored_user("cy"), "search.submitted")]
    assert profile_of(worker, "cy") == [["Software Engineer", "search"]]


def test_posthog_sdk_capture_and_set(pipeline):
    from posthog import Posthog
    worker, collector = pipeline
    client = Posthog("phc-key", host=collector.url, sync_mode=True, gzip=True)
    client.capture("notebook.run", distinct_id="dee", properties={"cells": 4})
    client.set(distinct_id="dee", properties={"title": "Data Scientist", "team": "ml"})
    client.flush()
    client.shutdown()
    rows = rows_of(worker, "notebooks", 1)
    assert [(r[0], r[1], r[4]["cells"]) for r in rows] == [(stored_user("dee"), "notebook.run", "4")]
    assert profile_of(worker, "dee") == [["Data Scientist", "ml"]]


class LostAnswerProxy(http.server.ThreadingHTTPServer):
    """Forwards each request to the collector; the first answer is lost (the client sees a 502)
    although the collector took the batch: the SDK retries, and the retry must not double it."""

    def __init__(self, target: str):
        self.target, self.forwarded = target, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(proxy.target + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                proxy.forwarded += 1
                if proxy.forwarded == 1:
                    status, payload = 502, b'{"lost": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_a_retried_batch_is_stored_once(pipeline):
    from segment.analytics import Client
    worker, collector = pipeline
    taken_before = collector.health()["accepted_events"]
    proxy = LostAnswerProxy(collector.url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        # its background consumer retries what did not get a 2xx, as in a real deployment
        client = Client("seg-write-key", host=f"http://127.0.0.1:{proxy.server_address[1]}", max_retries=3)
        for n in range(5):
            client.track(f"retry-user-{n}", "Query Run", {"n": n})
        client.flush()
        client.join()
    finally:
        proxy.shutdown()
    assert proxy.forwarded >= 2  # the batch whose answer was lost, and its retry
    assert collector.health()["accepted_events"] - taken_before > 5  # the collector took that batch twice ...
    deadline = time.monotonic() + 60
    while True:
        counts = worker.query("SELECT count(), uniqExact(event_id) FROM user_actions FINAL "
                              "WHERE app = 'lightdash' AND command = 'Query Run'")
        if counts[0][0] >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts == [[5, 5]]     # ... and is one row per event after FINAL


# ---- the answers it owes -------------------------------------------------------------------------

def test_bad_bodies_wrong_keys_and_sizes_get_the_apis_answers(pipeline):
    _, collector = pipeline
    auth = {"Authorization": "Basic " + __import__("base64").b64encode(b"seg-write-key:").decode()}
    status, body, _ = collector.post("/v1/batch", None, auth, raw=b"{not json")
    assert (status, body) == (400, {"success": False, "message": "the body is not JSON"})
    status, body, _ = collector.post("/v1/batch", {"batch": [{"type": "track", "event": "x"}]}, auth)
    assert status == 400 and "has no user" in body["message"]
    status, body, _ = collector.post("/v1/track", {"event": "x", "userId": "u"},
                                     {"Authorization": "Basic " + __import__("base64").b64encode(b"nope:").decode()})
    assert (status, body["message"]) == (401, "Invalid API key")
    status, body, _ = collector.post("/2/httpapi", {"api_key": "unknown", "events": [{"event_type": "x",
                                                                                      "user_id": "u"}]})
    assert (status, body) == (401, {"code": 401, "error": "Invalid API key"})
    status, body, _ = collector.post("/2/httpapi", {"events": [{"event_type": "x", "user_id": "u"}]})
    assert (status, body["error"]) == (400, "Invalid API key")
    status, body, _ = collector.post("/batch/", {"api_key": "phc-key", "batch": "x"})
    assert status == 400 and body["detail"] == "batch must be a list"
    status, _, _ = collector.post("/v1/batch", None, auth, raw=b" " * (6 * 1024 * 1024))
    assert status == 413
    bomb = gzip.compress(b'{"batch": [' + b" " * (30 * 1024 * 1024) + b"]}")
    status, _, _ = collector.post("/v1/batch", None, {**auth, "Content-Encoding": "gzip"}, raw=bomb)
    assert status == 413


def test_browsers_of_the_configured_origins_may_post(pipeline):
    _, collector = pipeline
    for origin, allowed in (("https://lightdash.example", True), ("https://elsewhere.example", False)):
        request = urllib.request.Request(collector.url + "/v1/track", method="OPTIONS", headers={"Origin": origin})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert (answer.headers.get("Access-Control-Allow-Origin") == origin) is allowed


def test_over_its_rate_a_key_gets_429(bootstrap, tmp_path):
    collector = Collector(tmp_path, bootstrap, f"r{uuid.uuid4().hex[:6]}-", "--rate-limit", "5")
    try:
        events = [{"event_type": "x", "user_id": f"u{n}"} for n in range(10)]
        status, _, headers = collector.post("/2/httpapi", {"api_key": "amp-api-key", "events": events})
        assert status == 429 and headers["Retry-After"] == "1"
    finally:
        collector.stop()


def test_with_kafka_away_nothing_is_acknowledged(tmp_path):
    collector = Collector(tmp_path, "127.0.0.1:1", "down-")
    try:
        status, body, headers = collector.post("/2/httpapi", {"api_key": "amp-api-key",
                                                              "events": [{"event_type": "x", "user_id": "u"}]})
        assert (status, headers["Retry-After"]) == (503, "5") and "retry later" in body["error"]
    finally:
        collector.stop()
