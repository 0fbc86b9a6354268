"""`tally bench --dashboard DATA_DIR`: how long each dashboard page takes to answer, over real data.

Each page's JSON (`Dashboard.respond`, the code behind `tally ui` and the worker's `/ui/`) is asked
for over the data's whole range, `--repeats` times; next to it, in the same run, the baseline: one
scan of the deduplicated events (`count()` and `uniqExact(user)` over `user_actions FINAL`), the
least any page over that range has to read. Make the data with `tally demo --days 30 --no-ui`.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

BASELINE_SQL = "SELECT count(), uniqExact(user) FROM user_actions FINAL"
SPAN_SQL = "SELECT count(), min(ds), max(ds), uniqExact(user) FROM user_actions FINAL"


class NoData(Exception):
    """The data dir holds no events to time the pages over."""


def _timed(call, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(ordered[-1], 1),
            "min_ms": round(ordered[0], 1)}


def run(data_dir: Path, repeats: int = 5, say=print) -> dict:
    from streams.analyst.dashboard.command import open_dashboard
    from streams.analyst.dashboard.pages import PAGES
    from streams.config import from_env

    dashboard = open_dashboard(from_env(data_dir=data_dir), token=None)
    (events, first, last, users), = dashboard.target.query(SPAN_SQL)[1]
    if not events:
        raise NoData(f"no events in {data_dir}: make them with `tally demo --days 30 --no-ui --data-dir {data_dir}`")
    say(f"{events:,} events of {users:,} users, {first} to {last}")
    baseline = _timed(lambda: dashboard.target.query(BASELINE_SQL), repeats)
    say(f"  baseline (one scan of user_actions FINAL)  {baseline['median_ms']:8.1f} ms")
    pages = {}
    for page in PAGES:
        query = {"page": page.name, "since": str(first), "until": str(last)}

        def ask():
            answer = dashboard.respond("GET", "api/page", query, {})
            assert answer.status == 200, answer.body[:300]
        pages[page.name] = _timed(ask, repeats)
        say(f"  {page.name:<42} {pages[page.name]['median_ms']:8.1f} ms  (max {pages[page.name]['max_ms']:.1f})")
    return {"kind": "dashboard", "data": {"events": events, "users": users, "first_day": str(first),
                                          "last_day": str(last)},
            "repeats": repeats, "baseline": baseline, "pages": pages}
