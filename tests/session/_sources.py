"""Acquisition sources for session tests."""

from __future__ import annotations

import queue


class ListSource:
    """Hands out prepared items, then stops (like a watcher whose scanner finished).

    No timing: the order is what matters.
    """

    def __init__(self, items):
        self.items = list(items)
        self.running = True

    def get(self, timeout=None):
        if not self.items:
            self.running = False
            raise queue.Empty
        return self.items.pop(0)
