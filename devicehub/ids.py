"""The one source of ids in the hub: monotonic ULIDs (session ids, message ids).

26 characters, Crockford base32, 48-bit millisecond time + 80 random bits. Within one
millisecond the random part is incremented, so ids made by one process sort in the
order they were made (a consumer that de-duplicates by ``msg_id`` keeps a stable order).
"""

from __future__ import annotations

import os
import re
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = range(120, -1, -10)
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


class UlidGenerator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def new(self, now_ms: int | None = None) -> str:
        with self._lock:
            ms = int(time.time() * 1000) if now_ms is None else now_ms
            if ms <= self._last_ms:
                ms = self._last_ms
                self._last_rand = (self._last_rand + 1) & ((1 << 80) - 1)
                if self._last_rand == 0:  # 2**80 ids in one ms: borrow the next ms
                    ms += 1
            else:
                self._last_rand = int.from_bytes(os.urandom(10), "big")
            self._last_ms = ms
            value = (ms << 80) | self._last_rand
        # 26 characters of 5 bits = 130 bits, two characters (10 bits) per lookup
        pairs = _CROCKFORD_PAIRS
        return "".join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


_ULIDS = UlidGenerator()


def new_ulid(now_ms: int | None = None) -> str:
    """A new ULID from the process-wide monotonic generator."""
    return _ULIDS.new(now_ms)
