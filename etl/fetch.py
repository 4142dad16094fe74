"""HTTP client for the portal: pooled session, timeouts, retries, conditional requests.

`PortalClient.fetch(path)` returns the page's bytes, archived before anyone parses them.
Retries are ours, not urllib3's, so that each one is logged with its reason and a
`Retry-After` from the portal is honoured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter

from etl import config
from etl.archive import RawArchive

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class FetchError(Exception):
    """A page that could not be fetched after all retries."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class FetchedPage:
    """A page's body and where it came from (a fresh 200 or the archive after a 304)."""

    url: str
    status: int
    body: bytes
    sha256: str
    not_modified: bool


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (our `fetched_at`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def absolute_url(base_url: str, path: str) -> str:
    """Absolute URL of a portal path (hrefs on the pages are site-absolute)."""
    if path.startswith(("http://", "https://")):
        return path
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class PortalClient:
    """One pooled `requests.Session` per client; share a client between threads."""

    def __init__(
        self,
        base_url: str,
        archive: RawArchive,
        *,
        pool_size: int = 16,
        timeout: float | None = None,
        retries: int | None = None,
        backoff_s: float = 0.5,
        conditional: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.archive = archive
        self.timeout = config.request_timeout() if timeout is None else timeout
        self.retries = config.max_retries() if retries is None else retries
        self.backoff_s = backoff_s
        self.conditional = conditional
        self.session = requests.Session()
        self.session.headers["User-Agent"] = config.USER_AGENT
        # Proxy settings are read from the environment once, not on every request
        # (requests does that per call when trust_env is on: ~0.4 ms a page).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def fetch(self, path: str) -> FetchedPage:
        """Fetch a page, retrying 429/5xx/timeouts with backoff; archive every response."""
        url = absolute_url(self.base_url, path)
        last_reason = "not attempted"
        last_status: int | None = None
        retry_after: str | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
                asked = retry_after_seconds(retry_after)
                wait = min(MAX_BACKOFF_S, delay if asked is None else asked)
                log.warning("retry %d/%d for %s in %.2fs: %s", attempt, self.retries, url, wait,
                            last_reason)
                time.sleep(wait)
            retry_after = None
            headers = self._conditional_headers(url)
            try:
                response = self.session.get(url, headers=headers, timeout=self.timeout)
                body = response.content  # reading the body raises on a truncated transfer
            except requests.Timeout as exc:
                last_reason, last_status = f"timeout after {self.timeout}s ({exc})", None
                continue
            except requests.RequestException as exc:
                last_reason, last_status = f"{exc.__class__.__name__}: {exc}", None
                continue
            fetched_at = utc_now()
            if response.status_code == 304:
                cached = self.archive.latest(url)
                if cached is not None:
                    return FetchedPage(url, 200, self.archive.read(cached.sha256), cached.sha256,
                                       not_modified=True)
                last_reason, last_status = "304 without an archived body", 304
                continue
            sha256 = self.archive.store(url, response.status_code, dict(response.headers), body,
                                        fetched_at)
            if response.status_code == 200:
                return FetchedPage(url, 200, body, sha256, not_modified=False)
            last_status = response.status_code
            last_reason = f"HTTP {response.status_code}"
            if response.status_code not in RETRYABLE_STATUS:
                break
            retry_after = response.headers.get("Retry-After")
            asked = retry_after_seconds(retry_after)
            if asked is not None and asked > MAX_BACKOFF_S:
                # Waiting longer would stall the whole cycle; the next scheduled run retries.
                last_reason += f", Retry-After {asked:.0f}s is longer than the {MAX_BACKOFF_S:.0f}s we wait"
                break
        if last_status is None or last_status in RETRYABLE_STATUS:
            last_reason = f"{last_reason} after {self.retries + 1} attempts"
        raise FetchError(url, last_reason, last_status)

    def _conditional_headers(self, url: str) -> dict[str, str]:
        if not self.conditional:
            return {}
        cached = self.archive.latest(url)
        if cached is None:
            return {}
        headers = {}
        if cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        return headers
