"""Incremental per-partition counts equal brute-force distinct counts, however the input is split."""
import datetime as dt
import random

import pytest

from streams.stages.active_users import (ALL_APPS, CALENDAR_WAU, PartitionActivity, day_ordinal, exact_counts,
                                  merge_partition_count, window_end, window_start)

D0 = dt.date(2026, 3, 2).toordinal()  # a Monday


def run(activity_triples, partitions=1, lateness=3, shuffle_seed=None):
    """Feed (app, user, day) into per-partition activities (users sharded by hash); sum the counts."""
    triples = list(activity_triples)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(triples)
    parts = [PartitionActivity(lateness) for _ in range(partitions)]
    for app, user, day in triples:
        part = parts[hash(user) % partitions]
        part.add(app, user, day)
        part.add(ALL_APPS, user, day)
    totals = {}
    for part in parts:
        for key, n in part.counts.items():
            totals[key] = totals.get(key, 0) + n
    return {k: v for k, v in totals.items() if v}


def test_dau_wau_mau_by_hand():
    # ann active Mon and Tue, bob on Tue, ann again a week later
    triples = [("cat", "ann", D0), ("cat", "ann", D0 + 1), ("cat", "bob", D0 + 1), ("cat", "ann", D0 + 7)]
    counts = run(triples)
    assert counts[("dau", "cat", D0)] == 1
    assert counts[("dau", "cat", D0 + 1)] == 2
    assert counts[("wau", "cat", D0 + 6)] == 2      # window D0..D0+6 holds ann and bob
    assert counts[("wau", "cat", D0 + 7)] == 2      # D0+1..D0+7: ann (D0+1, D0+7) and bob
    assert counts[("wau", "cat", D0 + 8)] == 1      # D0+2..D0+8: only ann
    assert counts[("mau", "cat", D0 + 27)] == 2
    assert counts[("mau", "cat", D0 + 28)] == 2      # D0+1..D0+28 still holds both
    assert counts[("mau", "cat", D0 + 29)] == 1      # D0+2..D0+29: only ann (D0+7)
    assert ("mau", "cat", D0 + 35) not in counts    # nobody active in D0+8..D0+35
    assert counts[(CALENDAR_WAU, "cat", D0)] == 2
    assert counts[(CALENDAR_WAU, "cat", D0 + 7)] == 1
    assert counts[("dau", ALL_APPS, D0 + 1)] == 2


@pytest.mark.parametrize("partitions", [1, 3, 8])
@pytest.mark.parametrize("seed", [1, 2])
def test_incremental_counts_equal_brute_force(partitions, seed):
    rnd = random.Random(seed)
    triples = [(rnd.choice(["cat", "bi", "code"]), f"u{rnd.randrange(60)}", D0 + rnd.randrange(40))
               for _ in range(3000)]
    # arrival order is arbitrary: counts only depend on the set of (app, user, day)
    assert run(triples, partitions, lateness=60, shuffle_seed=seed) == exact_counts(triples)


@pytest.mark.parametrize("batch_size", [1, 7, 500])
def test_batches_of_a_stream_publish_the_exact_counts(batch_size):
    """As the pipeline feeds it: batches of a stream in event-time order with up to 3 days of
    lateness, each batch added at once, its changed counts published, then the watermark advanced.
    The last published value of every window equals the brute-force distinct count."""
    rnd = random.Random(batch_size)
    triples = []
    for day in range(D0, D0 + 45):
        for _ in range(60):
            late = rnd.choice([0, 0, 0, 1, 3])
            triples.append((rnd.choice(["cat", "bi"]), f"u{rnd.randrange(80)}", max(D0, day - late)))
    activity = PartitionActivity(lateness_days=3)
    published = {}
    for start in range(0, len(triples), batch_size):
        batch = triples[start:start + batch_size]
        activity.add_batch(*(list(column) for column in zip(*batch)))
        published.update(activity.take_dirty())
        activity.advance(max(day for _, _, day in triples[:start + batch_size]))
    assert {key: n for key, n in published.items() if n} == exact_counts(triples)


def test_redelivery_never_counts_twice():
    triples = [("cat", f"u{i % 7}", D0 + i % 5) for i in range(50)]
    assert run(triples + triples[:20]) == exact_counts(triples)


def test_restore_from_persisted_days_gives_every_count_it_can_compute_exactly():
    rnd = random.Random(5)
    original = PartitionActivity(lateness_days=3)
    for day in range(61):  # in event-time order, as a partition delivers them
        for _ in range(15):
            original.add("cat", f"u{rnd.randrange(30)}", D0 + day)
        original.advance(D0 + day)
    original.take_dirty()
    restored = PartitionActivity(lateness_days=3)
    restored.restore([(app, user, days) for (app, user), days in original.user_days.items()], D0 + 60)
    oldest_retained = D0 + 60 - 3 - 28  # lateness + the longest window
    exact = {k: v for k, v in original.counts.items() if window_start(k) >= oldest_retained}
    assert any(window_end(k) < D0 + 60 - 3 for k in exact)  # final days too, not only the open ones
    assert restored.counts == exact
    assert set(restored.take_dirty()) == set(exact)  # re-sent once after the restart


def test_advance_forgets_old_users_and_final_days():
    activity = PartitionActivity(lateness_days=3)
    activity.add("cat", "old", D0)
    activity.add("cat", "new", D0 + 40)
    expired = activity.advance(D0 + 40)
    assert expired == [("cat", "old")]
    assert ("cat", "new") in activity.user_days
    assert all(day >= D0 + 40 - 3 - 7 for _, _, day in activity.counts)


def test_day_ordinal_is_utc_day():
    assert dt.date.fromordinal(day_ordinal(1_700_000_000_000)) == dt.date(2023, 11, 14)
    assert dt.date.fromordinal(day_ordinal(1_699_919_999_999)) == dt.date(2023, 11, 13)


def test_a_stale_or_repeated_partition_count_never_lowers_a_total():
    parts: dict[str, int] = {}
    assert merge_partition_count(parts, "0", 3)
    assert merge_partition_count(parts, "1", 5)
    assert not merge_partition_count(parts, "0", 2)  # from a worker that lost partition 0 a moment ago
    assert not merge_partition_count(parts, "1", 5)  # re-sent after a restore
    assert merge_partition_count(parts, "0", 4)
    assert sum(parts.values()) == 9


def test_persisted_buckets_restore_the_same_state():
    """What take_changed_buckets hands out, written to a table key per bucket (the last write of a key
    wins, an empty bucket deletes it), restores exactly the user days the partition had."""
    rnd = random.Random(9)
    live = PartitionActivity(lateness_days=3)
    table: dict[int, list] = {}
    for day in range(50):
        for _ in range(40):
            user, app = f"u{rnd.randrange(300)}", rnd.choice(["cat", "bi"])
            live.add(app, user, D0 + day)
            live.add(ALL_APPS, user, D0 + day)
        live.advance(D0 + day)  # users idle for longer than the retention drop out
        for bucket, users in live.take_changed_buckets().items():
            if users:
                table[bucket] = users
            else:
                table.pop(bucket, None)
    assert len(table) > 1 and all(users for users in table.values())
    restored = PartitionActivity(lateness_days=3)
    restored.restore([entry for users in table.values() for entry in users], D0 + 49)
    assert restored.user_days == live.user_days
    assert restored.take_changed_buckets() == {}  # nothing to write again
