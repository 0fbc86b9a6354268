"""Is a difference between A/B variants more than chance? The pooled two-proportion z-test.

For each variant of a funnel (after the first, taken as the baseline) and each later step: the
share of step-1 users who reached that step, against the baseline's share. Two-sided p-value from
the normal distribution; `significant` means p < 0.05. A pure function over the funnel's rows.
"""
from __future__ import annotations

import math

ALPHA = 0.05


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """(z, two-sided p) for x1/n1 against x2/n2; None when the test has nothing to go on."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def funnel_tests(columns: list[str], rows: list[tuple]) -> list[dict]:
    """One test per (later step, variant other than the baseline); [] with fewer than two variants."""
    at = {name: i for i, name in enumerate(columns)}
    users: dict[str, dict[int, int]] = {}
    actions: dict[int, str] = {}
    for row in rows:
        users.setdefault(row[at["variant"]], {})[row[at["step"]]] = row[at["users"]]
        actions[row[at["step"]]] = row[at["action"]]
    variants = sorted(users)
    if len(variants) < 2:
        return []
    baseline = variants[0]
    tests = []
    for step in sorted(s for s in actions if s > 1):
        n2, x2 = users[baseline].get(1, 0), users[baseline].get(step, 0)
        for variant in variants[1:]:
            n1, x1 = users[variant].get(1, 0), users[variant].get(step, 0)
            result = two_proportion_z(x1, n1, x2, n2)
            if result is None:
                continue
            z, p = result
            tests.append({"step": step, "action": actions[step], "variant": variant, "baseline": baseline,
                          "rate_percent": x1 * 100 / n1, "baseline_rate_percent": x2 * 100 / n2,
                          "z": z, "p_value": p, "significant": p < ALPHA})
    return tests
