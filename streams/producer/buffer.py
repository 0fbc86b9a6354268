"""The bounded buffer between callers and the sending thread."""
from __future__ import annotations

import collections
import threading

from streams.producer.arguments import DropPolicy


class EventBuffer:
    """Bounded FIFO. When full, `drop="oldest"` evicts the oldest event, `drop="newest"` refuses the new one.

    Every accepted event ends exactly once as delivered, failed, or `evicted`, which is what
    `Tracker.flush` counts on.
    """

    def __init__(self, capacity: int, drop: DropPolicy = "oldest"):
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        if drop not in ("oldest", "newest"):
            raise ValueError(f"drop policy must be 'oldest' or 'newest', not {drop!r}")
        self.capacity = capacity
        self.drop = drop
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.accepted = 0  # stored in the buffer
        self.evicted = 0   # stored, then pushed out by newer events
        self.refused = 0   # never stored (drop="newest" and full)

    @property
    def dropped(self) -> int:
        return self.evicted + self.refused

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item) -> bool:
        """Store `item`; False if the buffer was full and an event (old or this one) was dropped."""
        with self._lock:
            if len(self._items) < self.capacity:
                self._items.append(item)
                self.accepted += 1
                return True
            if self.drop == "newest":
                self.refused += 1
                return False
            self._items.popleft()
            self._items.append(item)
            self.accepted += 1
            self.evicted += 1
            return False

    def take(self, limit: int) -> list:
        with self._lock:
            count = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def requeue(self, items: list) -> None:
        """Put events that failed to send back at the front, oldest first; the bound and policy still hold."""
        with self._lock:
            self._items.extendleft(reversed(items))
            while len(self._items) > self.capacity:
                if self.drop == "oldest":
                    self._items.popleft()
                else:
                    self._items.pop()
                self.evicted += 1

    def snapshot(self) -> list:
        with self._lock:
            return list(self._items)
