"""News producer: poll RSS, Atom and JSON feeds, deduplicate, emit ``News`` events.

Feeds (``config/news.yaml``, :class:`kernel.config.NewsConfig`)
    Fetched with httpx (conditional GET: a feed's ``ETag`` / ``Last-Modified`` are sent
    back, a ``304`` is an empty poll), parsed with the standard library: RSS 2.0 and
    RSS 1.0 (RDF) and Atom through :mod:`xml.etree.ElementTree`, JSON Feed 1.x (or a
    plain list of objects) through msgspec. A feed that cannot be fetched or parsed is
    counted and logged (``news.feed_failed``) and the other feeds go on.
Items -> events
    ``headline`` from the title, ``url`` the normalised link, ``body`` the summary as
    plain text (tags removed, at most ``max_body_chars``), ``source`` the feed's name,
    ``symbols`` from the feed's own symbols and the keyword tags. ``ts_event`` is the
    item's published (else updated) time; an item without a readable time takes its
    ``ts_recv``, which is the injectable clock's reading when the feed's response came.
Deduplication
    An item is new unless its normalised URL (:func:`normalise_url`) or the hash of its
    normalised headline (lower case, whitespace collapsed) was seen before, in any feed;
    the memory is bounded (``seen_capacity``, oldest forgotten first) and lives in the
    process. The event id is :func:`kernel.events.time_prefixed_id` of ``ts_event`` and
    that key, so the same item polled again after a restart gets the same id and the
    journal (idempotent on ``event_id``) keeps it once.
Kafka
    :func:`publish` produces the events to the ``news`` topic through
    :class:`adapters.kafka.EventProducer` with those ids in the ``event_id`` header.
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from xml.etree import ElementTree

import httpx
import msgspec
import structlog

from adapters.kafka import EventProducer
from kernel.config import NewsConfig, NewsFeed
from kernel.events import News, time_prefixed_id

log = structlog.get_logger(__name__)

TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "yclid", "mc_cid", "mc_eid", "igshid", "_hsenc"}
)
"""Query parameters dropped by :func:`normalise_url`, besides every ``utm_*``."""

_ATOM = "{http://www.w3.org/2005/Atom}"
_RSS1 = "{http://purl.org/rss/1.0/}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FeedError(ValueError):
    """A feed's body is not a feed of the expected format (named in the message)."""


class FeedItem(msgspec.Struct, frozen=True):
    """One parsed item, before deduplication. ``published_ns`` is ``None`` when the item
    has no readable time."""

    headline: str
    url: str
    published_ns: int | None
    summary: str = ""


# -- normalisation -------------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """The URL as a deduplication key: scheme and host in lower case, default port,
    fragment, ``utm_*`` and other tracking parameters (:data:`TRACKING_PARAMS`) dropped,
    the other parameters sorted, no trailing slash. ``""`` stays ``""``."""
    text = url.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    netloc = host
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{host}:{parts.port}"
    if parts.username is not None:
        netloc = f"{parts.username}@{netloc}"
    query = sorted(
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in TRACKING_PARAMS
    )
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, urlencode(query), ""))


def normalise_headline(headline: str) -> str:
    return _SPACE.sub(" ", headline).strip().lower()


def dedupe_keys(url: str, headline: str) -> tuple[str, ...]:
    """``url:<normalised URL>`` (when there is a URL), then ``headline:<sha256>``."""
    digest = hashlib.sha256(normalise_headline(headline).encode()).hexdigest()
    keys = (f"url:{url}",) if url else ()
    return (*keys, f"headline:{digest}")


def plain_text(markup: str, limit: int) -> str:
    """HTML or text -> one line of text (tags removed, entities decoded), at most
    ``limit`` characters."""
    text = html.unescape(_TAG.sub(" ", markup))
    return _SPACE.sub(" ", text).strip()[:limit]


def to_ns(dt: datetime) -> int:
    """A datetime (naive = UTC) as integer ns since the epoch, exactly."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def parse_time(value: object) -> int | None:
    """RFC 822 (RSS), ISO 8601 (Atom, JSON Feed) or epoch seconds / ms -> ns; ``None``
    when it is none of those."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):  # epoch seconds, or ms from 1e11 (year 5138 in seconds)
        return value * 1_000_000 if abs(value) >= 10**11 else value * 1_000_000_000
    if isinstance(value, float):
        micros = value * 1000 if abs(value) >= 1e11 else value * 1_000_000
        return round(micros) * 1000
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return to_ns(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        pass
    try:
        return to_ns(parsedate_to_datetime(text))
    except (TypeError, ValueError, IndexError):
        return None


# -- parsing -------------------------------------------------------------------------------


def _text(el: ElementTree.Element | None) -> str:
    return "" if el is None else "".join(el.itertext()).strip()


def _first(*values: str) -> str:
    return next((v for v in values if v), "")


def _rss_items(root: ElementTree.Element) -> list[FeedItem]:
    items = root.findall("./channel/item") or root.findall(f"./{_RSS1}item")
    out = []
    for it in items:

        def child(name: str, item: ElementTree.Element = it) -> str:
            return _first(_text(item.find(name)), _text(item.find(f"{_RSS1}{name}")))

        guid = it.find("guid")
        permalink = guid is not None and guid.get("isPermaLink", "true") == "true"
        link = _first(child("link"), _text(guid) if permalink else "", it.get(f"{_RSS1}about", ""))
        when = _first(child("pubDate"), _text(it.find(f"{_DC}date")))
        summary = _first(child("description"), _text(it.find(f"{_CONTENT}encoded")))
        out.append(FeedItem(child("title"), link, parse_time(when), summary))
    return out


def _atom_items(root: ElementTree.Element) -> list[FeedItem]:
    out = []
    for entry in root.findall(f"{_ATOM}entry"):
        link = ""
        for el in entry.findall(f"{_ATOM}link"):
            if el.get("rel", "alternate") == "alternate" and el.get("href"):
                link = el.get("href", "")
                break
        when = _first(_text(entry.find(f"{_ATOM}published")), _text(entry.find(f"{_ATOM}updated")))
        summary = _first(_text(entry.find(f"{_ATOM}summary")), _text(entry.find(f"{_ATOM}content")))
        out.append(FeedItem(_text(entry.find(f"{_ATOM}title")), link, parse_time(when), summary))
    return out


def _json_items(body: bytes) -> list[FeedItem]:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise FeedError(f"not valid JSON: {exc}") from None
    if isinstance(doc, dict):
        items = next((doc[k] for k in ("items", "results", "data", "articles") if k in doc), None)
    else:
        items = doc
    if not isinstance(items, list):
        raise FeedError("JSON feed has no list of items (items, results, data or articles)")
    out = []
    for n, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise FeedError(f"JSON feed item {n} is a {type(obj).__name__}, not an object")

        def get(*names: str, obj: dict[str, Any] = obj) -> Any:
            return next((obj[k] for k in names if obj.get(k) not in (None, "")), None)

        title = get("title", "headline")
        url = get("url", "link", "external_url")
        when = get("date_published", "published_at", "published", "date_modified", "time")
        summary = get("summary", "content_text", "description", "content_html")
        out.append(
            FeedItem(
                str(title).strip() if title is not None else "",
                str(url).strip() if url is not None else "",
                parse_time(when),
                str(summary) if summary is not None else "",
            )
        )
    return out


def parse_feed(body: bytes, fmt: str = "auto") -> list[FeedItem]:
    """The items of a feed body; raises :class:`FeedError` naming what is wrong."""
    if fmt == "auto":
        fmt = "json" if body.lstrip()[:1] in (b"{", b"[") else "xml"
    if fmt == "json":
        return _json_items(body)
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise FeedError(f"not well-formed XML: {exc}") from None
    tag = root.tag
    if tag == f"{_ATOM}feed":
        if fmt not in ("xml", "atom"):
            raise FeedError(f"expected {fmt.upper()} but the document is an Atom feed")
        return _atom_items(root)
    if tag == "rss" or tag.endswith("}RDF"):
        if fmt not in ("xml", "rss"):
            raise FeedError(f"expected {fmt.upper()} but the document is an RSS feed")
        return _rss_items(root)
    raise FeedError(f"root element <{tag}> is neither RSS nor Atom")


# -- polling -------------------------------------------------------------------------------


@dataclass
class FeedStats:
    """One feed's poll: ``items`` parsed, ``new`` emitted, ``duplicates`` skipped,
    ``skipped`` items without a headline; ``error`` when the feed failed."""

    feed: str
    items: int = 0
    new: int = 0
    duplicates: int = 0
    skipped: int = 0
    not_modified: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class PollReport:
    """The events of one poll (sorted by ts_event, source, url, headline), their ids
    (same order) and what happened per feed."""

    events: list[News] = field(default_factory=list)
    event_ids: list[bytes] = field(default_factory=list)
    feeds: list[FeedStats] = field(default_factory=list)

    @property
    def failed(self) -> list[FeedStats]:
        return [f for f in self.feeds if not f.ok]

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates for f in self.feeds)


def news_event_id(event: News, key: str) -> bytes:
    """The id of a news item: its time and its deduplication key."""
    return time_prefixed_id(event.ts_event, b"news|" + key.encode())


class NewsPoller:
    """Polls the configured feeds; remembers what it emitted (see the module doc).

    ``clock`` gives ``ts_recv`` (ns; the wall clock by default); ``client`` an httpx
    client to use instead of one of its own (tests, proxies). Not thread-safe.
    """

    def __init__(
        self,
        config: NewsConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        client: httpx.Client | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self._own_client = client is None
        self.client = client or httpx.Client(
            timeout=config.timeout_s,
            follow_redirects=True,
            headers={"User-Agent": config.user_agent},
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._validators: dict[str, dict[str, str]] = {}
        self._keywords = [
            (symbol, re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.I))
            for symbol, words in sorted(config.keywords.items())
            if words
        ]

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> NewsPoller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self, feed: NewsFeed) -> tuple[bytes | None, int]:
        """The body (``None``: not modified) and the receive time."""
        headers = dict(self._validators.get(feed.url, {}))
        with self.client.stream("GET", feed.url, headers=headers) as response:
            if response.status_code == 304:
                return None, self.clock()
            response.raise_for_status()
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.config.max_bytes:
                    raise FeedError(f"response is over max_bytes={self.config.max_bytes}")
                chunks.append(chunk)
            received = self.clock()
            validators = {
                out: response.headers[name]
                for name, out in (("etag", "If-None-Match"), ("last-modified", "If-Modified-Since"))
                if name in response.headers
            }
        self._validators[feed.url] = validators
        return b"".join(chunks), received

    def _remember(self, keys: Sequence[str]) -> bool:
        """Whether any key was seen; records them all (bounded, oldest out first)."""
        seen = any(k in self._seen for k in keys)
        for k in keys:
            self._seen[k] = None
            self._seen.move_to_end(k)
        while len(self._seen) > self.config.seen_capacity:
            self._seen.popitem(last=False)
        return seen

    def _symbols(self, feed: NewsFeed, *texts: str) -> tuple[str, ...]:
        found = set(feed.symbols)
        for symbol, pattern in self._keywords:
            if any(pattern.search(t) for t in texts):
                found.add(symbol)
        return tuple(sorted(found))

    def poll_feed(self, feed: NewsFeed, report: PollReport) -> FeedStats:
        """Poll one feed into ``report``; a failure is recorded in the stats, not raised."""
        stats = FeedStats(feed=feed.name)
        try:
            body, ts_recv = self._fetch(feed)
            items = [] if body is None else parse_feed(body, feed.format)
        except (httpx.HTTPError, FeedError) as exc:
            stats.error = f"{type(exc).__name__}: {exc}"
            log.warning("news.feed_failed", feed=feed.name, url=feed.url, error=stats.error)
            return stats
        stats.not_modified = body is None
        stats.items = len(items)
        limit = self.config.max_body_chars
        for item in items:
            headline = plain_text(item.headline, 1_000)
            if not headline:
                stats.skipped += 1
                log.info("news.item_skipped", feed=feed.name, url=item.url, reason="no headline")
                continue
            url = normalise_url(item.url)
            keys = dedupe_keys(url, headline)
            if self._remember(keys):
                stats.duplicates += 1
                continue
            body_text = plain_text(item.summary, limit)
            event = News(
                ts_event=ts_recv if item.published_ns is None else item.published_ns,
                ts_recv=ts_recv,
                source=feed.name,
                headline=headline,
                url=url,
                symbols=self._symbols(feed, headline, body_text),
                body=body_text,
            )
            report.events.append(event)
            report.event_ids.append(news_event_id(event, keys[0]))
            stats.new += 1
        return stats

    def poll_once(self) -> PollReport:
        """Poll every feed once, in the configured order."""
        report = PollReport()
        for feed in self.config.feeds:
            report.feeds.append(self.poll_feed(feed, report))
        order = sorted(
            range(len(report.events)),
            key=lambda i: (
                report.events[i].ts_event,
                report.events[i].source,
                report.events[i].url,
                report.events[i].headline,
            ),
        )
        report.events = [report.events[i] for i in order]
        report.event_ids = [report.event_ids[i] for i in order]
        log.info(
            "news.polled",
            feeds=len(report.feeds),
            failed=len(report.failed),
            new=len(report.events),
            duplicates=report.duplicates,
        )
        return report


def publish(report: PollReport, producer: EventProducer, timeout: float = 30.0) -> int:
    """Produce the report's events to the ``news`` topic with their ids; returns how many
    are still undelivered after ``timeout`` s (0: all acknowledged)."""
    for event, eid in zip(report.events, report.event_ids, strict=True):
        producer.produce(event, eid=eid)
    return producer.flush(timeout)
