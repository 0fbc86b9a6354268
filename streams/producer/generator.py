"""Realistic multi-app traffic for the demo, the tests and the benchmarks (`tally generate`).

Three apps shaped like the seeds: the Amundsen data catalog (searches, clicks on a result index,
table/dashboard/user pages, metadata edits, logged by its `action_logging` decorator), a code-search
app with Amplitude-style `SearchSubmitted` / `ViewRepogroup:python` events, and a BI tool with
Lightdash-style `<object>.<action>` events, some carrying SQL or a password for the scrub stage.
Weekdays are busier than weekends, working hours than nights; a few % of calls fail.

Everything is a pure function of the seed: the same arguments give the same events, event ids
included, so a replay publishes the same ids and the ground truth can be recomputed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Iterator

from streams.contract import SCHEMA_VERSION, UserAction, UserProfile

APPS = ("amundsen", "code-search", "bi")
DAY_MS = 86_400_000

FIRST_NAMES = ("ada", "alan", "grace", "linus", "margaret", "dennis", "barbara", "ken", "frances", "edsger",
               "radia", "donald", "katherine", "john", "hedy", "tim", "sophie", "guido", "anita", "bjarne",
               "joan", "niklaus", "shafi", "leslie", "jean", "james", "mary", "yukihiro", "carol", "vint")
LAST_NAMES = ("lovelace", "turing", "hopper", "torvalds", "hamilton", "ritchie", "liskov", "thompson", "allen",
              "dijkstra", "perlman", "knuth", "johnson", "backus", "lamarr", "berners-lee", "wilson", "van-rossum",
              "borg", "stroustrup", "clarke", "wirth", "goldwasser", "lamport", "sammet", "gosling", "keller",
              "matsumoto", "shaw", "cerf")
# title -> (share of staff, app weights amundsen/code-search/bi, events per active day)
ROLES = {
    "Software Engineer": (0.34, (0.15, 0.80, 0.05), 6),
    "Data Scientist":    (0.16, (0.55, 0.10, 0.35), 9),
    "Analyst":           (0.14, (0.35, 0.00, 0.65), 10),
    "Data Engineer":     (0.12, (0.60, 0.30, 0.10), 8),
    "Product Manager":   (0.09, (0.15, 0.05, 0.80), 4),
    "Engineering Manager": (0.06, (0.20, 0.40, 0.40), 3),
    "Designer":          (0.05, (0.05, 0.15, 0.80), 2),
    "Executive":         (0.04, (0.05, 0.00, 0.95), 1),
}
TEAMS = ("search", "growth", "payments", "platform", "data-infra", "marketing-analytics", "mobile", "finance")

DATABASES = ("hive://gold", "hive://silver", "bigquery://analytics", "snowflake://prod")
SCHEMAS = ("core", "marketing", "finance", "product", "ops")
TABLES = ("orders", "customers", "sessions", "events", "payments", "refunds", "campaigns", "signups",
          "invoices", "inventory", "shipments", "experiments", "page_views", "subscriptions", "churn")
SEARCH_TERMS = ("orders", "customer", "revenue", "churn", "daily active", "signup funnel", "payments",
                "experiment", "marketing spend", "sessions", "refund rate", "ltv", "inventory", "dau")
DASHBOARDS = ("mode_dashboard://gold.finance/revenue_daily", "mode_dashboard://gold.growth/signup_funnel",
              "tableau_dashboard://prod.ops/shipments", "mode_dashboard://gold.product/engagement",
              "superset_dashboard://prod.marketing/campaigns")
TAGS = ("pii", "gold", "deprecated", "finance", "core", "sla-daily")
REPOGROUPS = ("python", "golang", "android", "kubernetes", "stanford", "cncf")
REPOS = ("github.com/acme/api", "github.com/acme/web", "github.com/acme/etl", "github.com/acme/ml-platform",
         "github.com/kubernetes/kubernetes", "github.com/golang/go", "github.com/python/cpython")
CODE_QUERIES = ("func main", "repo:acme/api TODO", "lang:python def retry", "context:global http.Client",
                "type:symbol UserAction", "lang:go errgroup", "file:Dockerfile FROM python")
WAREHOUSES = ("bigquery", "postgres", "snowflake", "redshift", "databricks")
CHART_TYPES = ("BAR", "LINE", "TABLE", "BIG_NUMBER", "PIE", "SCATTER")
HOSTS = {"amundsen": ("amundsen-frontend-1", "amundsen-frontend-2"),
         "code-search": ("sourcegraph-frontend-0", "sourcegraph-frontend-1", "sourcegraph-frontend-2"),
         "bi": ("lightdash-0",)}
ERRORS = ("TimeoutError: search backend did not answer within 30s",
          "NotFoundError: resource does not exist",
          "PermissionError: user is not allowed to read this resource",
          "ConnectionError: metadata service unavailable (503)",
          "ValueError: invalid filter expression")
# median duration in ms (log-normal, sigma 0.8) by the command's prefix or name
MEDIAN_MS = {"search": 350, "_get": 120, "_log": 80, "_update": 200, "update": 200, "Search": 450,
             "query.executed": 1800, "chart.created": 600, "dashboard.viewed": 900}


# --- Profiles --------------------------------------------------------------------------------------

def people_of(seed: int, users: int) -> list[tuple[str, str, str]]:
    """(email, title, team) per user; titles by quota so role sizes are stable for a seed."""
    rng = random.Random(f"{seed}:people")
    emails: list[str] = []
    taken: set[str] = set()
    while len(emails) < users:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first}.{last}@example.com"
        suffix = 2
        while email in taken:
            email = f"{first}.{last}{suffix}@example.com"
            suffix += 1
        taken.add(email)
        emails.append(email)
    titles: list[str] = []
    for title, (share, _, _) in ROLES.items():
        titles += [title] * round(share * users)
    titles = (titles + ["Software Engineer"] * users)[:users]
    rng.shuffle(titles)
    return [(email, title, rng.choice(TEAMS)) for email, title in zip(emails, titles)]


def generate_profiles(seed: int, users: int, updated_epoch_ms: int = 0) -> list[UserProfile]:
    """One profile per user: email as the user id, a title (role), a team, A/B flags."""
    rng = random.Random(f"{seed}:flags")
    profiles = []
    for email, title, team in people_of(seed, users):
        flags = {"new_search_ui": "true" if rng.random() < 0.5 else "false",
                 "dashboard_v2": "true" if rng.random() < 0.2 else "false"}
        profiles.append(UserProfile(user=email, email=email, title=title, team=team, ab_flags=flags,
                                    updated_epoch_ms=updated_epoch_ms))
    return profiles


# --- Actions ---------------------------------------------------------------------------------------

def _event_id(rng: random.Random, epoch_ms: int) -> str:
    """A UUIDv7 like contract.new_event_id, with its random bits from `rng` so a seed replays the same ids."""
    value = (epoch_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62
    return str(uuid.UUID(int=value | rng.getrandbits(62)))


def _table_key(rng: random.Random) -> str:
    return f"{rng.choice(DATABASES)}.{rng.choice(SCHEMAS)}/{rng.choice(TABLES)}"


def _result_index(rng: random.Random) -> int:
    """Clicked result position: mostly the first few (geometric), as search CTR analyses expect."""
    return min(int(math.log(1 - rng.random()) / math.log(0.55)), 19)


def _duration_ms(rng: random.Random, command: str) -> int:
    median = MEDIAN_MS.get(command) or next((ms for prefix, ms in MEDIAN_MS.items() if command.startswith(prefix)), 150)
    return max(1, int(rng.lognormvariate(math.log(median), 0.8)))


def _amundsen_episode(rng: random.Random, user: str) -> list[dict]:
    """A search and the clicks that follow, a browse, or a metadata edit, as `action_logging` records them."""
    kind = rng.random()
    if kind < 0.55:
        term = rng.choice(SEARCH_TERMS)
        events = [{"command": "search_table", "pos_args": [],
                   "kwargs": {"search_term": term, "page_index": 0, "search_type": "table"},
                   "output": {"total_results": rng.randint(0, 240)}}]
        for _ in range(rng.choices((0, 1, 2), (0.3, 0.55, 0.15))[0]):
            source = "search_results" if rng.random() < 0.8 else "inline_search"
            target = rng.random()
            if target < 0.75:
                events.append({"command": "_get_table_metadata", "kwargs": {
                    "table_key": _table_key(rng), "index": str(_result_index(rng)), "source": source,
                    "search_term": term}})
            elif target < 0.9:
                events.append({"command": "_get_dashboard_metadata", "kwargs": {
                    "dashboard_uri": rng.choice(DASHBOARDS), "index": str(_result_index(rng)), "source": source,
                    "search_term": term}})
            else:
                events.append({"command": "_log_get_user", "kwargs": {
                    "user_id": f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}@example.com",
                    "index": str(_result_index(rng)), "source": source, "search_term": term}})
        return events
    if kind < 0.85:
        if rng.random() < 0.8:
            return [{"command": "_get_table_metadata",
                     "kwargs": {"table_key": _table_key(rng), "index": "", "source": "browse"}}]
        return [{"command": "_get_dashboard_metadata",
                 "kwargs": {"dashboard_uri": rng.choice(DASHBOARDS), "index": "", "source": "browse"}}]
    table_key = _table_key(rng)
    if rng.random() < 0.5:
        return [{"command": "_get_table_metadata", "kwargs": {"table_key": table_key, "index": "", "source": "browse"}},
                {"command": "_update_table_description",
                 "kwargs": {"table_key": table_key, "description": f"Owned by {user.split('@')[0]}; refreshed daily."}}]
    return [{"command": "update_table_tags",
             "kwargs": {"table_key": table_key, "tag": rng.choice(TAGS), "method": rng.choice(("PUT", "DELETE"))}}]


def _code_search_episode(rng: random.Random, user: str) -> list[dict]:
    """Sourcegraph eventLogger names (Proper Case object-action) with Amplitude-style properties."""
    if rng.random() < 0.2:
        group = rng.choice(REPOGROUPS)
        return [{"command": f"ViewRepogroup:{group}", "properties": {"repogroup": group},
                 "location": f"/{group}"}]
    query = rng.choice(CODE_QUERIES)
    results = rng.randint(0, 500)
    events = [{"command": "SearchSubmitted",
               "properties": {"query": query, "patternType": rng.choice(("literal", "regexp", "structural")),
                              "results_count": str(results)}}]
    if results and rng.random() < 0.6:
        repo = rng.choice(REPOS)
        events.append({"command": "SearchResultClicked",
                       "properties": {"query": query, "index": str(_result_index(rng)), "repo": repo}})
        events.append({"command": "ViewBlob", "properties": {"repo": repo, "file_ext": rng.choice(("py", "go", "ts"))},
                       "target_type": "blob", "target_id": f"{repo}/-/blob/main.{rng.choice(('py', 'go', 'ts'))}"})
        if rng.random() < 0.3:
            events.append({"command": rng.choice(("GoToDefinition", "FindReferences")), "properties": {"repo": repo}})
    return events


def _bi_episode(rng: random.Random, user: str) -> list[dict]:
    """Lightdash `<object>.<action>` events; some carry SQL or a password, which the scrub stage must catch."""
    dashboard_id = f"d-{rng.randint(1, 40):03d}"
    kind = rng.random()
    if kind < 0.5:
        events = [{"command": "dashboard.viewed", "properties": {"dashboard_id": dashboard_id,
                                                                 "charts": str(rng.randint(1, 12))},
                   "target_type": "dashboard", "target_id": dashboard_id,
                   "location": f"/projects/p1/dashboards/{dashboard_id}"}]
        if rng.random() < 0.4:
            events.append({"command": "query.executed", "properties": {
                "dashboard_id": dashboard_id, "warehouse": rng.choice(WAREHOUSES),
                "filters": str(rng.randint(0, 5))}})
        return events
    if kind < 0.8:
        table = rng.choice(TABLES)
        kwargs = {"explore": table, "limit": rng.choice((500, 1000, 5000))}
        if rng.random() < 0.3:
            kwargs["sql"] = f"SELECT * FROM {table} WHERE user_email = '{user}' LIMIT 500"
        return [{"command": "explore.viewed", "properties": {"explore": table}, "location": f"/projects/p1/tables/{table}"},
                {"command": "query.executed", "kwargs": kwargs,
                 "properties": {"warehouse": rng.choice(WAREHOUSES), "filters": str(rng.randint(0, 5))}}]
    if kind < 0.95:
        chart_id = f"c-{rng.randint(1, 400):04d}"
        return [{"command": "chart.created", "kwargs": {"chart_id": chart_id, "dashboard_id": dashboard_id},
                 "properties": {"chart_id": chart_id, "chartType": rng.choice(CHART_TYPES)}}]
    warehouse = rng.choice(WAREHOUSES)
    return [{"command": "warehouse_connection.updated",
             "kwargs": {"type": warehouse, "host": f"{warehouse}.internal", "user": "lightdash",
                        "password": f"pw-{rng.getrandbits(40):x}"},
             "properties": {"warehouseConnectionType": warehouse}}]


EPISODES = {"amundsen": _amundsen_episode, "code-search": _code_search_episode, "bi": _bi_episode}


def _time_of_day_ms(rng: random.Random) -> int:
    """Working hours: peaks late morning and mid-afternoon (UTC), a thin tail at night."""
    if rng.random() < 0.1:
        return rng.randrange(DAY_MS)
    hour = rng.gauss(10.5, 1.5) if rng.random() < 0.5 else rng.gauss(14.5, 1.7)
    return int(min(max(hour, 0.0), 23.99) * 3_600_000 + rng.randrange(60_000))


def _day_events(rng: random.Random, day: date, people, apps: tuple[str, ...], events_per_day: int,
                error_rate: float, session_rate: float) -> list[UserAction]:
    weekend = day.weekday() >= 5
    budget = int(events_per_day * (0.2 if weekend else 1.0))
    day_ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
    # who shows up today: a weekday regular more likely than a weekend one; heavier roles more often
    present = [p for p in people if rng.random() < (0.12 if weekend else 0.55) * p[3]]
    if not present:
        present = [rng.choice(people)]
    weights = [p[4] for p in present]
    events: list[UserAction] = []
    while len(events) < budget:
        email, title, _, _, _, app_weights = rng.choices(present, weights)[0]
        usable = [(app, w) for app, w in zip(APPS, app_weights) if app in apps and w > 0]
        if not usable:
            usable = [(app, 1.0) for app in apps]
        app = rng.choices([a for a, _ in usable], [w for _, w in usable])[0]
        at = day_ms + _time_of_day_ms(rng)
        session_id = f"sess-{rng.getrandbits(48):012x}" if rng.random() < session_rate else ""
        host = rng.choice(HOSTS[app])
        for step in EPISODES[app](rng, email):
            if len(events) >= budget:
                break
            command = step["command"]
            duration = _duration_ms(rng, command)
            action = UserAction(
                event_id=_event_id(rng, at), app=app, schema_version=SCHEMA_VERSION, command=command, user=email,
                host_name=host, start_epoch_ms=at, end_epoch_ms=at + duration, session_id=session_id,
                pos_args_json=json.dumps(step.get("pos_args", [])) if app == "amundsen" else "",
                keyword_args_json=json.dumps(step["kwargs"]) if "kwargs" in step else "",
                target_id=step.get("target_id", ""), target_type=step.get("target_type", ""),
                location=step.get("location", ""), properties=step.get("properties", {}))
            if rng.random() < error_rate:
                action.error = rng.choice(ERRORS)
            elif "output" in step:
                action.output = json.dumps(step["output"])
            events.append(action)
            at = min(at + duration + int(rng.expovariate(1 / 8000)), day_ms + DAY_MS - 1)
    events.sort(key=lambda a: a.start_epoch_ms)
    return events


def generate_actions(seed: int, start_day: date, days: int, users: int, events_per_day: int,
                     apps: Iterable[str] = APPS, error_rate: float = 0.03,
                     session_rate: float = 0.1) -> Iterator[UserAction]:
    """Events in time order, each inside [start_day, start_day + days) UTC; deterministic for a seed.

    `events_per_day` is a weekday's volume; weekend days get a fifth of it.
    """
    apps = tuple(apps)
    unknown = set(apps) - set(APPS)
    if unknown:
        raise ValueError(f"unknown apps {sorted(unknown)}; choose from {APPS}")
    rng = random.Random(f"{seed}:activity")
    people = []
    for email, title, team in people_of(seed, users):
        _, app_weights, per_day = ROLES[title]
        engagement = min(rng.paretovariate(2.0) / 2, 1.6)  # a few power users, many occasional ones
        people.append((email, title, team, min(engagement, 1.0 / 0.55), per_day * engagement, app_weights))
    for offset in range(days):
        day = start_day + timedelta(days=offset)
        day_rng = random.Random(f"{seed}:{day.isoformat()}")
        yield from _day_events(day_rng, day, people, apps, events_per_day, error_rate, session_rate)


# --- Ground truth ----------------------------------------------------------------------------------

class GroundTruth:
    """Counts what the pipeline should report, fed one event at a time (so it can run beside a publish)."""

    def __init__(self) -> None:
        self._events: dict[str, int] = defaultdict(int)
        self._errors: dict[str, int] = defaultdict(int)
        self._day_users: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._day_events: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._week_users: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._commands: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, action: UserAction) -> None:
        day = datetime.fromtimestamp(action.start_epoch_ms / 1000, timezone.utc).date()
        week = (day - timedelta(days=day.weekday())).isoformat()
        for app in (action.app, "*"):
            self._events[app] += 1
            self._errors[app] += bool(action.error)
            self._day_users[app][day.isoformat()].add(action.user)
            self._day_events[app][day.isoformat()] += 1
            self._week_users[app][week].add(action.user)
            self._commands[app][action.command] += 1

    def result(self, with_users: bool = False) -> dict:
        """Per app and "*" (all apps): events, errors, distinct users, and per UTC day / ISO week."""
        out = {}
        for app in sorted(self._events):
            summary = {
                "events": self._events[app],
                "errors": self._errors[app],
                "distinct_users": len(set().union(*self._day_users[app].values())),
                "daily_users": {d: len(u) for d, u in sorted(self._day_users[app].items())},
                "daily_events": dict(sorted(self._day_events[app].items())),
                "weekly_users": {w: len(u) for w, u in sorted(self._week_users[app].items())},
                "commands": dict(sorted(self._commands[app].items())),
            }
            if with_users:
                summary["daily_user_sets"] = {d: sorted(u) for d, u in sorted(self._day_users[app].items())}
            out[app] = summary
        return out


def ground_truth(actions: Iterable[UserAction], with_users: bool = False) -> dict:
    truth = GroundTruth()
    for action in actions:
        truth.add(action)
    return truth.result(with_users)


# --- Publishing ------------------------------------------------------------------------------------

async def publish_traffic(bootstrap: str, topic: str, actions: Iterable[UserAction], rate: float = 0.0,
                          profiles: Iterable[UserProfile] = (), profiles_topic: str | None = None,
                          envelope: int = 1) -> tuple[int, int]:
    """Profiles first (keyed by user, to the compacted topic), then actions keyed by user at `rate`/s
    (0 = as fast as acks allow), one per message or `envelope` per UserActionBatch message.
    Returns (acknowledged, failed) actions."""
    from streams.producer.publish import envelope_messages, partition_count, send_with_acks
    key = partition_key()
    if profiles_topic:
        await send_with_acks(bootstrap, profiles_topic,
                             ((key(p.user), p.SerializeToString(), None) for p in profiles))
    if envelope > 1:
        events = {"acked": 0, "failed": 0}

        def count(tags, error, _metadata) -> None:
            events["failed" if error else "acked"] += len(tags)

        messages = envelope_messages(((action, None) for action in actions), await partition_count(bootstrap, topic),
                                     max_actions=envelope, round_size=envelope * 4, round_seconds=0.1, rate=rate)
        await send_with_acks(bootstrap, topic, messages, on_result=count)
        return events["acked"], events["failed"]
    return await send_with_acks(bootstrap, topic, ((key(a.user), a.SerializeToString(), None) for a in actions),
                                rate=rate)


def partition_key():
    """user -> Kafka key: the user id as sent, which the pipeline partitions by (the pseudonym is
    made after), so Kafka's default partitioner puts each event where it is taken: no re-route."""
    return lambda user: user.encode("utf-8", "surrogatepass")


# --- CLI -------------------------------------------------------------------------------------------

def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser(
        "generate", help="generate realistic multi-app traffic (to Kafka, or to JSON lines)",
        description="Generate Amundsen, code-search and BI traffic for a user population, deterministic "
                    "for a seed. Publishes profiles and actions to Kafka, or writes JSON lines that "
                    "`tally publish` reads; --truth writes what the pipeline should report.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--start-day", type=date.fromisoformat,
                        help="first UTC day, YYYY-MM-DD (default: DAYS days before today, so the last is yesterday)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events-per-day", type=int, default=2000, help="events on a weekday; weekends get 1/5")
    parser.add_argument("--apps", default=",".join(APPS), help=f"comma-separated, from {','.join(APPS)}")
    parser.add_argument("--rate", type=float, default=0.0, help="events per second; 0 = as fast as possible")
    parser.add_argument("--envelope", type=int, default=1,
                        help="actions per Kafka message (UserActionBatch envelopes when > 1; default 1)")
    parser.add_argument("--topic", help="default: the user-actions topic")
    parser.add_argument("--profiles-topic", help="default: the user-profiles topic; '' to skip profiles")
    parser.add_argument("--truth", metavar="FILE", help="write the ground truth (per-day distinct users, ...) as JSON")
    parser.add_argument("--jsonl", metavar="FILE", help="write JSON lines (- for stdout) instead of publishing")
    add_settings_args(parser)
    parser.set_defaults(func=_cli_generate)


def _cli_generate(args: argparse.Namespace) -> int:
    from streams.cli import settings_from_args
    from streams.producer.publish import action_to_json
    settings = settings_from_args(args)
    start_day = args.start_day or (datetime.now(timezone.utc).date() - timedelta(days=args.days))
    apps = tuple(a.strip() for a in args.apps.split(",") if a.strip())
    truth = GroundTruth()

    def counted(actions: Iterable[UserAction]) -> Iterator[UserAction]:
        for action in actions:
            truth.add(action)
            yield action

    actions = counted(generate_actions(args.seed, start_day, args.days, args.users, args.events_per_day, apps))
    failed = 0
    if args.jsonl:
        out = sys.stdout if args.jsonl == "-" else open(args.jsonl, "w", encoding="utf-8")
        written = 0
        with out if out is not sys.stdout else contextlib.nullcontext():
            for action in actions:
                out.write(json.dumps(action_to_json(action), ensure_ascii=False) + "\n")
                written += 1
        summary = f"wrote {written} events to {args.jsonl}"
    else:
        topic = args.topic or settings.topics.user_actions
        profiles_topic = settings.topics.user_profiles if args.profiles_topic is None else args.profiles_topic
        profiles = generate_profiles(args.seed, args.users, int(datetime.now(timezone.utc).timestamp() * 1000))
        acked, failed = asyncio.run(publish_traffic(settings.bootstrap, topic, actions, args.rate, profiles,
                                                    profiles_topic or None, args.envelope))
        summary = f"published {acked} events to {topic} ({failed} failed)" + (
            f" and {len(profiles)} profiles to {profiles_topic}" if profiles_topic else "")
    if args.truth:
        with open(args.truth, "w", encoding="utf-8") as f:
            json.dump({"seed": args.seed, "start_day": start_day.isoformat(), "days": args.days, "users": args.users,
                       "events_per_day": args.events_per_day, "apps": truth.result()}, f, indent=2)
    print(summary, file=sys.stderr if args.jsonl == "-" else sys.stdout)
    return 1 if failed else 0

