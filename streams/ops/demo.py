"""`tally demo`: the whole pipeline live on embedded defaults.

Starts a local Kafka broker (unless --bootstrap names one), a worker, and the traffic generator
(two weeks of multi-app traffic ending yesterday); prints progress while the worker catches up,
then the active users it computed and a sample query answered by ClickHouse. Stops everything it
started, also on Ctrl-C.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
import urllib.request
from pathlib import Path

from streams.ops.broker import free_port

SAMPLE_SQL = """
SELECT app, event_name, count() AS events, uniqExact(user) AS users,
       round(quantile(0.95)(duration_ms)) AS p95_ms, round(avg(has_error) * 100, 1) AS error_pct
FROM user_actions GROUP BY app, event_name ORDER BY events DESC LIMIT 12
"""


def get_json(url: str, body: dict | None = None, timeout: float = 10.0):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}")


def wait_for_worker(web: str, worker: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise DemoFailed(f"the worker exited with code {worker.returncode}")
        try:
            get_json(f"{web}/stats/", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("worker did not start serving its web endpoint")


def print_table(columns: list[str], rows: list[list]) -> None:
    """The analysts' table, indented under the demo's headings."""
    from streams.analyst.output import format_table
    print("\n".join("  " + line for line in format_table(columns, rows).splitlines()[:-1]))


def stream_args(data_dir: Path) -> list[str]:
    """Topics and consumer group of this data directory's demo on a broker it does not own: a new
    demo must not resume a previous one's offsets and tables (kept in the broker)."""
    marker = data_dir / "demo-stream"
    if not marker.exists():
        marker.write_text(f"demo-{uuid.uuid4().hex[:8]}")
    name = marker.read_text().strip()
    return ["--topic-prefix", f"{name}-", "--app-id", name]


class DemoFailed(Exception):
    """A part of the demo stopped; the message says which."""


def stop(process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


DEFAULT_DATA_DIR = Path(".tally/demo")
DEMO_MARK = "tally-demo"  # in every demo's data dir: the only kind a new demo removes


def is_demo_data(data_dir: Path) -> bool:
    """Whether a directory is a previous demo's (or empty): the default one, or one the demo marked."""
    return (data_dir.resolve() == DEFAULT_DATA_DIR.resolve() or (data_dir / DEMO_MARK).exists()
            or not any(data_dir.iterdir()))


def run_demo(args) -> int:
    from streams.ops.broker import broker_for, cluster_for
    from streams.config import from_env

    data_dir = Path(args.data_dir or DEFAULT_DATA_DIR)
    if data_dir.is_dir() and not args.keep:
        if not is_demo_data(data_dir):
            print(f"error: {data_dir} holds data that is not a demo's, and the demo starts by removing its "
                  f"data dir: give the demo a --data-dir of its own", file=sys.stderr)
            return 2
        print(f"removing the previous demo's data in {data_dir} (its broker, store and key; --keep keeps them) ...",
              flush=True)
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / DEMO_MARK).touch()
    settings = from_env(data_dir=data_dir, bootstrap=args.bootstrap)
    broker = None
    worker = generator = None
    tally = [sys.executable, "-m", "streams.cli"]
    web_port = free_port()
    web = f"http://127.0.0.1:{web_port}"
    interrupted = False
    failed = example_person = ""
    try:
        replication = []
        if not args.bootstrap and args.cluster:
            broker = cluster_for(settings, 3)
            print(f"starting a Kafka cluster (KRaft, three nodes) on {broker.bootstrap} ...", flush=True)
            broker.start()
            settings = from_env(data_dir=data_dir, bootstrap=broker.bootstrap)
            replication = ["--replication", "3"]
        elif not args.bootstrap:
            broker = broker_for(settings)
            print(f"starting Kafka (KRaft, single node) on {broker.bootstrap} ...", flush=True)
            broker.start()
        print("starting the Tally worker ...", flush=True)
        worker_log = open(data_dir / "worker.log", "ab")
        stream = stream_args(data_dir) if args.bootstrap else []
        worker = subprocess.Popen([*tally, "worker", "--data-dir", str(data_dir), "--bootstrap", settings.bootstrap,
                                   "--web-port", str(web_port), *stream, *replication], stdout=worker_log,
                                  stderr=subprocess.STDOUT)
        wait_for_worker(web, worker)
        start_day = dt.date.today() - dt.timedelta(days=args.days)
        print(f"generating {args.days} days of traffic from {start_day} for {args.users} users "
              f"({args.events_per_day} events/day, up to {args.rate} events/s) ...", flush=True)
        generator = subprocess.Popen(
            [*tally, "generate", "--bootstrap", settings.bootstrap, "--seed", str(args.seed), "--days", str(args.days),
             "--start-day", start_day.isoformat(), "--users", str(args.users),
             "--events-per-day", str(args.events_per_day), "--rate", str(args.rate), *stream[:2]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        idle_polls = 0
        last_consumed = -1
        while True:
            time.sleep(1.0)
            stats = get_json(f"{web}/stats/")
            elapsed = time.monotonic() - started
            lag = sum(stats["consumer_lag"].values())
            print(f"  {elapsed:5.0f}s  consumed {stats['consumed']:>8,}  stored {stats['delivered']:>8,}  "
                  f"dead letters {stats['dead_lettered']:>5,}  duplicates {stats['duplicates']:>4,}  "
                  f"inserts {stats['sink']['inserts']:>4}  lag {lag:>6,}", flush=True)
            if worker.poll() is not None:
                raise DemoFailed("the worker stopped unexpectedly")
            if generator.poll() is not None:
                idle_polls = idle_polls + 1 if stats["consumed"] == last_consumed and lag == 0 else 0
                if idle_polls >= 2:
                    break
            last_consumed = stats["consumed"]
        output = generator.stdout.read().strip()
        if output:
            print("generator: " + output.splitlines()[-1])
        if generator.returncode != 0:
            raise DemoFailed(f"the traffic generator failed (exit code {generator.returncode})")
        report(web)
        example_person = most_active_person(web, settings, args.seed, args.users)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping ...")
    except DemoFailed as exc:
        failed = f"error: {exc}; its log: {data_dir / 'worker.log'}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave Kafka running
        stop(generator)
        stop(worker)
        if broker is not None:
            broker.stop()
        print(f"stopped. The demo's ClickHouse data stays in {data_dir} for "
              f"`tally query --data-dir {data_dir} \"SELECT ...\"`")
        if failed:
            print(failed, file=sys.stderr)
        elif example_person:
            print(f"one person's usage, looked up by email: tally report user_stats --data-dir {data_dir} "
                  f"--user {example_person}")
    if interrupted or failed:
        return 130 if interrupted else 1
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return show_dashboard(settings, serve=not args.no_ui and sys.stdin.isatty() and sys.stdout.isatty())


def port_is_free(port: int) -> bool:
    import socket
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def show_dashboard(settings, serve: bool) -> int:
    """In a terminal, serve the dashboard over the demo's data until Ctrl-C; otherwise say how."""
    from streams.analyst.dashboard.command import DEFAULT_PORT, serve as serve_dashboard

    if not serve:
        print(f"the dashboard: tally ui --data-dir {settings.data_dir}, then open http://127.0.0.1:{DEFAULT_PORT}/")
        return 0
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()
    return serve_dashboard(settings, "127.0.0.1", port, announce="\nthe demo's dashboard")


def report(web: str, settle_s: float = 30.0) -> None:
    """The live active users (waiting until they have taken the last events, at most `settle_s`),
    a sample of ClickHouse, and the two compared."""
    from streams.ops.metrics import as_of

    check = get_json(f"{web}/query/", {"sql": "SELECT toString(ds), uniqExact(user) FROM user_actions "
                                               "GROUP BY ds ORDER BY ds DESC LIMIT 1"})
    day, users = check["rows"][0] if check.get("rows") else (None, None)

    def live_dau(totals: list[dict]):
        return next((t["value"] for t in totals if t["metric"] == "dau" and t["app"] == "*" and t["day"] == day), None)

    deadline = time.monotonic() + settle_s
    totals = get_json(f"{web}/active-users/")
    while day is not None and live_dau(totals) != users and time.monotonic() < deadline:
        time.sleep(0.5)  # the totals agent publishes about once a second
        totals = get_json(f"{web}/active-users/")
    title, table = as_of(totals)
    print(f"\n{title} (exact, live from the worker's Faust tables):")
    if table:
        print_table(["app", "day", "DAU", "WAU", "MAU"], table)
    answer = get_json(f"{web}/query/", {"sql": SAMPLE_SQL})
    print("\nClickHouse: most frequent actions, their users, p95 duration and error rate")
    if "error" in answer:
        print("  query failed: " + answer["error"])
    else:
        print_table(answer["columns"], answer["rows"])
    if day is not None:
        print(f"\nClickHouse says {users} distinct users on {day}; the live table says {live_dau(totals) or '?'}")


def most_active_person(web: str, settings, seed: int, users: int) -> str:
    """The email of the generated person with the most events (stored under a pseudonym)."""
    from streams.producer.generator import people_of
    from streams.stages.scrub import Scrubber, load_policy
    from streams.store import pseudonym_key

    answer = get_json(f"{web}/query/", {"sql": "SELECT user FROM user_actions GROUP BY user "
                                               "ORDER BY count() DESC, user LIMIT 1"})
    key = pseudonym_key.with_key(settings, create=False).hmac_key
    if not answer.get("rows") or not key:
        return ""
    stored_user = Scrubber(load_policy(settings.scrub_policy, key)).scrub_user
    return next((email for email, _, _ in people_of(seed, users) if stored_user(email) == answer["rows"][0][0]), "")


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run broker, worker and traffic generator live, then report")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    parser.add_argument("--cluster", action="store_true",
                        help="start a three-node Kafka cluster (topics replicated 3x) instead of one broker")
    parser.add_argument("--data-dir", help="where the demo keeps its state (default .tally/demo)")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--events-per-day", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=20000, help="events/s the generator sends at most")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the previous demo's data")
    parser.add_argument("--no-ui", action="store_true",
                        help="end without serving the dashboard (in a terminal the demo serves it until Ctrl-C)")
    parser.set_defaults(func=run_demo)
