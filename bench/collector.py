"""`tally bench --collector`: the HTTP collector's events/s and CPU per event, with batches of 100.

Two client threads post Segment `/v1/batch` bodies of `batch` track calls over keep-alive
connections, each waiting for its answer (200 = Kafka acknowledged), to a `tally collect`
process; its CPU comes from /proc, so "per core" is events per CPU-second of that process. In
the same run, the baseline: the same bodies to a bare aiohttp server in a process of its own that
parses the JSON and answers 200 (the HTTP and JSON floor, no mapping, no Protobuf, no Kafka).
"""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from . import procstat

FLOOR_SERVER = """
import sys
from aiohttp import web
async def take(request):
    body = await request.json()
    return web.json_response({"success": True, "n": len(body["batch"])})
app = web.Application(client_max_size=5 * 1024 * 1024)
app.router.add_post("/v1/batch", take)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""
WRITE_KEY = "bench-write-key"


def _bodies(batches: int, batch: int) -> list[bytes]:
    bodies = []
    for b in range(batches):
        calls = [{"type": "track", "event": "Dashboard Viewed", "userId": f"user-{(b * batch + n) % 5000}",
                  "messageId": str(uuid.uuid4()), "timestamp": "2026-11-24T16:00:00.250Z",
                  "properties": {"dashboard": f"d{n % 40}", "tiles": n % 12, "filters": {"region": "emea"}}}
                 for n in range(batch)]
        bodies.append(json.dumps({"batch": calls}).encode())
    return bodies


def _wait_listening(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server on {port} did not start: {process.stdout.read() if process.stdout else ''}")
            time.sleep(0.1)


def _drive(port: int, bodies: list[bytes], pid: int, clients: int = 2) -> dict:
    import base64
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    statuses: list[int] = []
    lock = threading.Lock()

    def client(share: list[bytes]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body in share:
            connection.request("POST", "/v1/batch", body, {"Content-Type": "application/json", "Authorization": auth})
            answer = connection.getresponse()
            answer.read()
            with lock:
                statuses.append(answer.status)
        connection.close()

    warm = max(1, len(bodies) // 10)
    threads = [threading.Thread(target=client, args=(bodies[i:warm:clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rest = bodies[warm:]
    before, started = procstat.sample(pid), time.perf_counter()
    threads = [threading.Thread(target=client, args=(rest[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, after = time.perf_counter() - started, procstat.sample(pid)
    events = sum(len(json.loads(b)["batch"]) for b in rest)
    cpu = after.cpu_seconds - before.cpu_seconds
    return {"events": events, "seconds": round(seconds, 3), "events_per_s": round(events / seconds),
            "cpu_seconds": round(cpu, 3), "events_per_cpu_second": round(events / cpu) if cpu else None,
            "rss_mb": round(after.rss_mb, 1), "not_200": sum(s != 200 for s in statuses)}


def run(bootstrap: str, batches: int = 2000, batch: int = 100, say=print) -> dict:
    from streams.ops.broker import free_port
    bodies = _bodies(batches, batch)
    results = {"kind": "collector", "batch": batch, "batches": batches, "clients": 2}
    work = Path(tempfile.mkdtemp(prefix="tally-bench-collector-"))
    keys = work / "keys.yaml"
    keys.write_text(f"keys: {{{WRITE_KEY}: bench}}\n")

    port = free_port()
    floor = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_listening(port, floor)
        say("baseline: bare aiohttp server, JSON parsed, nothing published ...")
        results["baseline"] = _drive(port, bodies, floor.pid)
        say(f"    {results['baseline']['events_per_s']:,} events/s")
    finally:
        floor.terminate()
        floor.wait(30)

    import asyncio

    from streams.config import Topics
    from streams.ops.broker import create_topics
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    topics = Topics.with_prefix(prefix)
    asyncio.run(create_topics(bootstrap, {topics.user_actions: 4, topics.user_profiles: 4}, {topics.user_profiles}))
    port = free_port()
    collector = subprocess.Popen([sys.executable, "-m", "streams.cli", "collect", "--port", str(port), "--keys",
                                  str(keys), "--bootstrap", bootstrap, "--topic-prefix", prefix], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        _wait_listening(port, collector)
        say("collector: tally collect, acknowledged by Kafka ...")
        results["collector"] = _drive(port, bodies, collector.pid)
        say(f"    {results['collector']['events_per_s']:,} events/s, "
            f"{results['collector']['events_per_cpu_second']:,} events per CPU-second")
    finally:
        collector.terminate()
        collector.wait(30)
    return results
