"""Exact rolling active users: DAU, WAU (7 days), MAU (28 days) and calendar-week WAU.

Users are sharded by Kafka partition (the input is keyed by user), so each partition keeps the
active days of its own users and exact distinct counts for them; the total for any (metric, app,
day) is the sum over partitions. Everything here is pure: the wiring persists the day lists in a
Faust table and rebuilds the counts from it after a restart. They are persisted by bucket of
users (`USER_BUCKETS` keys per partition, each written at most once per batch, only when one of
its users gained a day), not one key per user: a changelog write per user and day is what
otherwise dominates the cost of a busy batch.
"""
from __future__ import annotations

import bisect
import datetime as dt
import operator
import zlib
from collections.abc import Iterable

WINDOWS = {"dau": 1, "wau": 7, "mau": 28}
CALENDAR_WAU = "calendar_wau"
METRICS = (*WINDOWS, CALENDAR_WAU)
ALL_APPS = "*"

MetricKey = tuple[str, str, int]  # (metric, app, day ordinal the window ends on / week's Monday)
USER_BUCKETS = 256  # persisted day lists are grouped into this many table keys per partition
PersistedDays = list  # [app, user, [day ordinals]] per user of a bucket, as the table stores it


def user_bucket(user: str) -> int:
    """The persistence bucket of a user (stable across processes, unlike hash())."""
    return zlib.crc32(user.encode("utf-8", "surrogatepass")) % USER_BUCKETS


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_by_day = operator.itemgetter(-1)
_WINDOW_WIDTHS = tuple(WINDOWS.items())
_LONGEST = max(WINDOWS.values())


def day_ordinal(epoch_ms: int) -> int:
    return _EPOCH_ORDINAL + epoch_ms // 86_400_000


def day_iso(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).isoformat()


def day_ordinal_of(iso_day: str) -> int:
    return dt.date.fromisoformat(iso_day).toordinal()


def window_end(key: MetricKey) -> int:
    """The last day a metric key's window covers (a calendar week's key is its Monday)."""
    metric, _, day = key
    return day + 6 if metric == CALENDAR_WAU else day


def window_start(key: MetricKey) -> int:
    """The first day a metric key's window covers."""
    metric, _, day = key
    return day if metric == CALENDAR_WAU else day - WINDOWS[metric] + 1


class PartitionActivity:
    """Active days of one partition's users and the distinct counts they imply."""

    def __init__(self, lateness_days: int) -> None:
        self.lateness_days = lateness_days
        self.user_days: dict[tuple[str, str], list[int]] = {}
        self.counts: dict[MetricKey, int] = {}
        self.dirty: set[MetricKey] = set()
        self.watermark_day = 0
        self.buckets: dict[int, set[tuple[str, str]]] = {}  # bucket -> its (app, user) keys
        self.changed_buckets: set[int] = set()
        self.historical: set[tuple[str, int]] = set()  # (app, day) of days added behind the live horizon
        self._noted: dict[tuple[str, int, int, int], int] = {}  # (app, day, previous, next) -> users (`_note`)
        # days a user's activity must be kept: the longest window plus the allowed lateness
        self.retention_days = max(WINDOWS.values()) + lateness_days

    def _note(self, days: list[int], index: int, app: str) -> None:
        """Note days[index] for `_apply_counts`, with the user's previous and next active days as far
        as they matter: a batch's new days share a few such keys (no window is longer than 28 days)."""
        day = days[index]
        previous = days[index - 1] if index > 0 else -10**9
        following = days[index + 1] if index + 1 < len(days) else 10**9
        key = (app, day, max(previous, day - _LONGEST), min(following, day + _LONGEST))
        self._noted[key] = self._noted.get(key, 0) + 1

    def _apply_counts(self) -> None:
        """Count each noted day in every open window it newly makes its user active in.

        With p and n the user's previous and next active days, a window [E-W+1, E] gains the user
        exactly when it holds the new day d but neither p nor n: E in [max(d, p+W), min(d+W-1, n-1)].
        Windows that ended before the live horizon are closed: a day that falls into one (a
        historical event) is left to the store to count, through `take_corrections`. Each metric's
        ranges become changes at their ends, swept once over the days they span."""
        if not self._noted:
            return
        horizon = self.watermark_day - self.lateness_days
        counts, dirty = self.counts, self.dirty
        get = counts.get
        changes: dict[tuple[str, str], dict[int, int]] = {}  # (metric, app) -> day -> change from that day on
        for (app, day, previous, following), users in self._noted.items():
            if day < horizon:
                self.historical.add((app, day))
            for metric, width in _WINDOW_WIDTHS:
                first, last = max(day, previous + width, horizon), min(day + width - 1, following - 1)
                if first <= last:
                    series = changes.setdefault((metric, app), {})
                    series[first] = series.get(first, 0) + users
                    series[last + 1] = series.get(last + 1, 0) - users
            monday = day - (day - 1) % 7  # day ordinal 1 (0001-01-01) was a Monday
            if previous < monday and following > monday + 6 and monday + 6 >= horizon:
                key = (CALENDAR_WAU, app, monday)
                counts[key] = get(key, 0) + users
                dirty.add(key)
        self._noted.clear()
        for (metric, app), series in changes.items():
            ends = sorted(series.items())
            covering = 0
            for (day, change), (next_day, _) in zip(ends, ends[1:]):
                covering += change
                if covering:
                    for end in range(day, next_day):
                        key = (metric, app, end)
                        counts[key] = get(key, 0) + covering
                        dirty.add(key)

    def add(self, app: str, user: str, day: int) -> list[int] | None:
        """Record that `user` was active in `app` on `day`. Returns the user's new day list, or None
        when nothing changed (the common case: already active that day)."""
        days = self._add(app, user, day)
        self._apply_counts()
        return days

    def _add(self, app: str, user: str, day: int) -> list[int] | None:
        """`add`, with the window counts left noted for `_apply_counts`."""
        days = self.user_days.get((app, user))
        if days is not None and days[-1] == day:  # the commonest case of all: another event today
            return None
        if day < self.watermark_day - self.retention_days:  # older than any open window: the store counts it
            self.historical.add((app, day))
            return None
        bucket = user_bucket(user)
        if days is None:
            days = self.user_days[(app, user)] = [day]
            index = 0
            self.buckets.setdefault(bucket, set()).add((app, user))
        elif days[-1] < day:  # the usual case: a new latest day
            days.append(day)
            index = len(days) - 1
        else:
            index = bisect.bisect_left(days, day)
            if index < len(days) and days[index] == day:
                return None
            days.insert(index, day)
        self.changed_buckets.add(bucket)
        self._note(days, index, app)
        oldest_kept = max(day, self.watermark_day) - self.retention_days
        if days[0] < oldest_kept:
            del days[:bisect.bisect_left(days, oldest_kept)]
        return days

    def add_batch(self, apps: list[str], users: list[str], days: list[int]) -> None:
        """`add` for each (app, user, day) of a batch, and for every app together (`ALL_APPS`): each
        distinct one once, oldest day first (a batch repeats the same few users and days)."""
        distinct = sorted(set(zip(apps, users, days)), key=_by_day)
        add = self._add
        for app, user, day in distinct:
            add(app, user, day)
        for user, day in sorted({(user, day) for _, user, day in distinct}, key=_by_day):
            add(ALL_APPS, user, day)
        self._apply_counts()

    def restore(self, user_days: Iterable[tuple[str, str, Iterable[int]]], watermark_day: int) -> None:
        """Rebuild from persisted (app, user, days) after a restart or a rebalance.

        Persisted lists hold every day from `watermark_day - retention_days` on, so the count of
        any window starting there or later comes out exact; older windows would come out too low
        and are left out. The exact ones stay dirty, to be re-sent once: the worker may have died
        after persisting days but before sending counts (the totals keep the highest count a
        partition ever sent, so re-sending an unchanged one is harmless)."""
        for app, user, days in user_days:
            for day in sorted(set(days)):
                self._add(app, user, day)
        self._apply_counts()
        self.advance(watermark_day)
        self.changed_buckets.clear()  # as persisted
        oldest_exact = watermark_day - self.retention_days
        for key in [k for k in self.counts if window_start(k) < oldest_exact]:
            del self.counts[key]
            self.dirty.discard(key)

    def advance(self, watermark_day: int) -> list[tuple[str, str]]:
        """Move the partition's event-time watermark; forget what no longer matters.
        Returns the (app, user) keys whose persisted day lists must be deleted."""
        if watermark_day <= self.watermark_day:
            return []
        self.watermark_day = watermark_day
        final_before = watermark_day - self.lateness_days  # windows ending earlier can't change now
        for key in [k for k in self.counts if k[2] < final_before - 7]:
            del self.counts[key]
            self.dirty.discard(key)
        expired = [k for k, days in self.user_days.items() if days[-1] < watermark_day - self.retention_days]
        for key in expired:
            del self.user_days[key]
            bucket = user_bucket(key[1])
            self.buckets[bucket].discard(key)
            self.changed_buckets.add(bucket)
        return expired

    def take_changed_buckets(self) -> dict[int, list[PersistedDays]]:
        """The buckets whose users gained or lost days since the last call, with their full
        contents ([] when the bucket is now empty): what the wiring persists."""
        changed = {}
        user_days = self.user_days
        for bucket in self.changed_buckets:
            keys = self.buckets.get(bucket, ())
            changed[bucket] = [[app, user, list(user_days[(app, user)])] for app, user in keys]
        self.changed_buckets.clear()
        return changed

    def take_corrections(self) -> set[tuple[str, int]]:
        """The (app, day) pairs added behind the live horizon since the last call: the windows they
        fall into are closed here, and are counted again from the store."""
        historical, self.historical = self.historical, set()
        return historical

    def take_dirty(self) -> dict[MetricKey, int]:
        """The counts changed since the last call."""
        changed = {key: self.counts.get(key, 0) for key in self.dirty}
        self.dirty.clear()
        return changed


def closed_windows(app_days: Iterable[tuple[str, int]], horizon: int, current_day: int) -> set[MetricKey]:
    """Every metric key whose window holds one of `app_days` but ended before `horizon` (and has
    happened: not after `current_day`): what a store correction recounts for a partition."""
    keys: set[MetricKey] = set()
    last_closed = min(horizon - 1, current_day)
    for app, day in app_days:
        for metric, width in _WINDOW_WIDTHS:
            for end in range(day, min(day + width - 1, last_closed) + 1):
                keys.add((metric, app, end))
        monday = day - (day - 1) % 7
        if monday + 6 < horizon and monday <= current_day:
            keys.add((CALENDAR_WAU, app, monday))
    return keys


def merge_partition_count(parts: dict[str, int], partition: str, count: int) -> bool:
    """Apply one partition's count for a key to the key's per-partition counts; True if it changed.

    A partition's count only grows (a user active on a day stays active on it), so the highest one
    wins: a stale partial from a worker that has just lost the partition, or a count re-sent after
    a restore, never moves a total back."""
    if count <= parts.get(partition, 0):
        return False
    parts[partition] = count
    return True


def exact_counts(activity: Iterable[tuple[str, str, int]]) -> dict[MetricKey, int]:
    """Reference implementation over (app, user, day) triples, by brute force: what the tests
    (and anyone checking ClickHouse) compare the incremental counts with."""
    users_by_app_day: dict[tuple[str, int], set[str]] = {}
    for app, user, day in activity:
        for scope in (app, ALL_APPS):
            users_by_app_day.setdefault((scope, day), set()).add(user)
    apps = {app for app, _ in users_by_app_day}
    days = [day for _, day in users_by_app_day]
    if not days:
        return {}
    result: dict[MetricKey, int] = {}
    for app in apps:
        for end in range(min(days) - 6, max(days) + 28):  # from the Monday of the first week
            for metric, width in WINDOWS.items():
                users: set[str] = set()
                for day in range(end - width + 1, end + 1):
                    users |= users_by_app_day.get((app, day), set())
                if users:
                    result[(metric, app, end)] = len(users)
            if dt.date.fromordinal(end).weekday() == 0:
                users = set()
                for day in range(end, end + 7):
                    users |= users_by_app_day.get((app, day), set())
                if users:
                    result[(CALENDAR_WAU, app, end)] = len(users)
    return result
