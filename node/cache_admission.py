"""Which downloads may fill the page cache: a version's range is cached from its second read on.

Why: a download whose data is not cached is cheapest read around the cache with O_DIRECT
(node.page_cache says why), but a node that only ever did that would never cache anything:
its uploads are written with O_DIRECT too, so an object read a thousand times would be read
from the disk a thousand times (measured here: after any number of downloads, `fincore`
showed none of the object's pages cached). Most objects of an attachment store are read once
or never, and caching those would only push out the ones read again; so a read is admitted to
the cache the second time its range is asked for, the "cache on second hit" rule of content
delivery networks (Maggs and Sitaraman, "Algorithmic nuggets in content delivery", 2015).

`SecondRead` remembers the last `capacity` (version, start) pairs a worker served, the way 2Q
remembers pages it did not keep; a pair seen again is read through the cache, with read-ahead,
and from then on every worker finds it cached (`cachestat`). Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import collections
import threading

#: Distinct (version, start) pairs a worker remembers: a few hundred KiB, far more objects
#: than the page cache of these machines holds at the node's typical object sizes.
CAPACITY = 4096


class SecondRead:
    """Answers "has this range of this version been read before?", remembering it either way."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()  # downloads open in the worker's pool threads

    def seen_before(self, disk_name: str, start: int) -> bool:
        key = (disk_name, start)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return True
            self._seen[key] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return False
