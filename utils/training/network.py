"""Does a server answer? Asked before anything that would otherwise retry for minutes offline.

The Hub (datasets) and W&B both retry for a long time when there is no network; one quick HEAD
request tells us first, so the person gets a clear message in seconds.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request


def answers(url: str, timeout: float) -> bool:
    """Does ``url`` answer an HTTP HEAD within ``timeout`` s (any status counts)? In a daemon
    thread, so a slow DNS lookup, which no socket timeout covers, cannot stretch the wait."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                        timeout=timeout):
                answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # an error status is still an answer
        except (OSError, ValueError):
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered) and answered[0]
