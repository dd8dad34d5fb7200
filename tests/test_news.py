"""News producer: RSS, Atom and JSON feeds served on 127.0.0.1, deduplicated into News
events, produced to Kafka (the session's test broker) and journaled once."""

from __future__ import annotations

import hashlib
import http.server
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import structlog

from adapters.journal import SqliteJournal
from adapters.journal.base import NEWS_STREAM
from adapters.kafka import EventConsumer, consume_into_journal, create_topics
from adapters.news import NewsPoller, normalise_url, parse_feed, parse_time, publish
from journal_tools.cli import main
from kernel.config import KafkaConfig, NewsConfig, NewsFeed
from kernel.events import News, time_prefixed_id

S = 1_000_000_000
JAN6 = 1_736_121_600 * S  # 2025-01-06T00:00:00Z
H = 3_600 * S
M = 60 * S

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Wire</title>
<item><title>Bitcoin ETF inflows hit a record</title>
  <link>https://News.Example.com/markets/btc-etf/?utm_source=rss&amp;utm_medium=feed</link>
  <pubDate>Mon, 06 Jan 2025 10:00:00 GMT</pubDate>
  <description>&lt;p&gt;Spot bitcoin ETFs took in &amp;amp; more.&lt;/p&gt;</description></item>
<item><title>Ethereum upgrade scheduled</title>
  <link>https://news.example.com/tech/eth-upgrade#comments</link>
  <pubDate>Mon, 06 Jan 2025 11:30:00 +0100</pubDate>
  <description>The ether network forks in March.</description></item>
<item><title>  </title><link>https://news.example.com/untitled</link></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom wire</title>
<entry><title>BTC ETFs: record inflows</title>
  <link rel="alternate" href="HTTPS://NEWS.EXAMPLE.COM/markets/btc-etf?utm_campaign=x"/>
  <published>2025-01-06T10:01:00Z</published></entry>
<entry><title>Solana outage resolved</title>
  <link rel="self" href="https://other.example.org/feed/entry/7"/>
  <link href="https://other.example.org/sol?utm_term=z&amp;id=7"/>
  <updated>2025-01-06T09:15:00Z</updated><summary>Validators restarted.</summary></entry>
</feed>"""

JSON_FEED = msgspec.json.encode(
    {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "JSON wire",
        "items": [
            {
                "id": "1",
                "title": "ethereum   upgrade scheduled",
                "url": "https://elsewhere.example.net/eth",
                "date_published": "2025-01-06T10:45:00+00:00",
            },
            {
                "id": "2",
                "title": "Stablecoin bill advances",
                "date_published": "2025-01-06T08:00:00Z",
                "summary": "No URL here",
            },
            {"id": "3", "title": "Stablecoin bill advances", "date_published": "2025-01-06"},
            {
                "id": "4",
                "title": "Kraken lists new pairs",
                "url": "https://news.example.com/kraken/",
                "date_published": 1_736_160_000,
            },
        ],
    }
)

BROKEN = b"<rss><channel><item><title>oops</title></channel>"

KEYWORDS = {
    "BTC-USDT": ("bitcoin", "btc"),
    "ETH-USDT": ("ethereum", "ether", "eth"),
    "SOL-USDT": ("solana",),
}


class FeedServer(http.server.ThreadingHTTPServer):
    """Serves ``routes`` (path -> body); ``/rss.xml`` answers If-None-Match with 304."""

    routes: dict[str, bytes]
    requests: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    server: FeedServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.path == "/rss.xml" and self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        if self.path == "/rss.xml":
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def feed_server() -> Iterator[str]:
    server = FeedServer(("127.0.0.1", 0), Handler)
    server.routes = {
        "/rss.xml": RSS,
        "/atom.xml": ATOM,
        "/feed.json": JSON_FEED,
        "/broken.xml": BROKEN,
    }
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def news_config(base: str) -> NewsConfig:
    return NewsConfig(
        feeds=(
            NewsFeed(name="wire", url=f"{base}/rss.xml"),
            NewsFeed(name="broken", url=f"{base}/broken.xml", format="rss"),
            NewsFeed(name="atomwire", url=f"{base}/atom.xml", format="atom"),
            NewsFeed(name="jsonwire", url=f"{base}/feed.json"),
        ),
        keywords=KEYWORDS,
        timeout_s=5.0,
    )


R0 = 1_800_000_000 * S  # the fake clock's readings: R0, R0 + 1 ms, ...


def fake_clock() -> Iterator[int]:
    n = 0
    while True:
        yield R0 + n * 1_000_000
        n += 1


def expected_events() -> list[News]:
    # clock readings: wire R0, broken R0+1ms (fetched, then fails to parse), atomwire
    # R0+2ms, jsonwire R0+3ms; sorted by ts_event
    ms = 1_000_000
    return [
        News(
            ts_event=JAN6 + 8 * H,
            ts_recv=R0 + 3 * ms,
            source="jsonwire",
            headline="Stablecoin bill advances",
            body="No URL here",
        ),
        News(
            ts_event=JAN6 + 9 * H + 15 * M,
            ts_recv=R0 + 2 * ms,
            source="atomwire",
            headline="Solana outage resolved",
            url="https://other.example.org/sol?id=7",
            symbols=("SOL-USDT",),
            body="Validators restarted.",
        ),
        News(
            ts_event=JAN6 + 10 * H,
            ts_recv=R0,
            source="wire",
            headline="Bitcoin ETF inflows hit a record",
            url="https://news.example.com/markets/btc-etf",
            symbols=("BTC-USDT",),
            body="Spot bitcoin ETFs took in & more.",
        ),
        News(
            ts_event=JAN6 + 10 * H + 30 * M,  # 11:30 +01:00
            ts_recv=R0,
            source="wire",
            headline="Ethereum upgrade scheduled",
            url="https://news.example.com/tech/eth-upgrade",
            symbols=("ETH-USDT",),
            body="The ether network forks in March.",
        ),
        News(
            ts_event=JAN6 + 10 * H + 40 * M,
            ts_recv=R0 + 3 * ms,
            source="jsonwire",
            headline="Kraken lists new pairs",
            url="https://news.example.com/kraken",
        ),
    ]


def expected_ids() -> list[bytes]:
    stablecoin = hashlib.sha256(b"stablecoin bill advances").hexdigest()
    keys = [
        f"headline:{stablecoin}",
        "url:https://other.example.org/sol?id=7",
        "url:https://news.example.com/markets/btc-etf",
        "url:https://news.example.com/tech/eth-upgrade",
        "url:https://news.example.com/kraken",
    ]
    return [
        time_prefixed_id(ev.ts_event, b"news|" + k.encode())
        for ev, k in zip(expected_events(), keys, strict=True)
    ]


# -- parsing and normalisation (no network) ------------------------------------------------


def test_normalise_url() -> None:
    assert (
        normalise_url("HTTPS://News.Example.COM:443/a/b/?utm_source=x&b=2&a=1&fbclid=q#frag")
        == "https://news.example.com/a/b?a=1&b=2"
    )
    assert normalise_url("http://example.com:8080/") == "http://example.com:8080"
    assert normalise_url("https://example.com/x?UTM_Medium=y") == "https://example.com/x"
    assert normalise_url("") == ""


def test_parse_time_formats() -> None:
    assert parse_time("Mon, 06 Jan 2025 10:00:00 GMT") == JAN6 + 10 * H
    assert parse_time("Mon, 06 Jan 2025 11:30:00 +0100") == JAN6 + 10 * H + 30 * M
    assert parse_time("2025-01-06T10:00:00.250Z") == JAN6 + 10 * H + 250_000_000
    assert parse_time("2025-01-06T12:00:00+02:00") == JAN6 + 10 * H
    assert parse_time(1_736_157_600) == JAN6 + 10 * H
    assert parse_time(1_736_157_600_500) == JAN6 + 10 * H + 500_000_000
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def test_parse_feed_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="not well-formed XML"):
        parse_feed(BROKEN)
    with pytest.raises(ValueError, match="expected RSS but the document is an Atom feed"):
        parse_feed(ATOM, "rss")
    with pytest.raises(ValueError, match="no list of items"):
        parse_feed(b'{"title": "x"}')
    assert [i.headline for i in parse_feed(ATOM)] == [
        "BTC ETFs: record inflows",
        "Solana outage resolved",
    ]


# -- polling a local server ----------------------------------------------------------------


def test_poll_dedupes_across_feeds_and_a_broken_feed_does_not_stop_the_others(
    feed_server: str,
) -> None:
    clock = fake_clock()
    with (
        structlog.testing.capture_logs() as logs,
        NewsPoller(news_config(feed_server), clock=lambda: next(clock)) as poller,
    ):
        report = poller.poll_once()
        assert report.events == expected_events()
        assert report.event_ids == expected_ids()
        stats = {f.feed: (f.items, f.new, f.duplicates, f.skipped, f.ok) for f in report.feeds}
        assert stats == {
            "wire": (3, 2, 0, 1, True),  # the third item has no headline
            "broken": (0, 0, 0, 0, False),
            "atomwire": (2, 1, 1, 0, True),  # same URL as the RSS item, other headline
            "jsonwire": (4, 2, 2, 0, True),  # one same headline, one repeated headline
        }
        (failed,) = report.failed
        assert failed.error.startswith("FeedError: not well-formed XML")
        warnings = [e for e in logs if e["event"] == "news.feed_failed"]
        assert [(w["feed"], w["log_level"]) for w in warnings] == [("broken", "warning")]

        # the same feeds again: nothing new; the RSS feed answers 304 to its ETag
        again = poller.poll_once()
        assert again.events == []
        assert {f.feed: (f.not_modified, f.duplicates) for f in again.feeds} == {
            "wire": (True, 0),
            "broken": (False, 0),
            "atomwire": (False, 2),
            "jsonwire": (False, 4),
        }


def test_published_to_kafka_and_journaled_once_across_a_restart(
    feed_server: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    kafka = KafkaConfig(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{secrets.token_hex(4)}.",
        partitions=1,
        linger_ms=5,
    )
    create_topics(kafka)
    from adapters.kafka import EventProducer

    for _restart in range(2):  # a fresh poller remembers nothing: same items, same ids
        clock = fake_clock()
        with (
            NewsPoller(news_config(feed_server), clock=lambda c=clock: next(c)) as poller,
            EventProducer(kafka) as producer,
        ):
            report = poller.poll_once()
            assert publish(report, producer) == 0
            assert producer.stats.delivered == 5
    journal = SqliteJournal(tmp_path / "j.db")
    consumer = EventConsumer(kafka, f"g{secrets.token_hex(4)}", ("news",), assign=True)
    try:
        seen = 0
        deadline = time.monotonic() + 20
        while seen < 10 and time.monotonic() < deadline:
            seen += consume_into_journal(consumer, journal, timeout=0.5, max_batches=1).appended
    finally:
        consumer.close()
    assert seen == 10  # two deliveries of each item...
    rows = list(journal.read(NEWS_STREAM))  # ...one journal row each
    assert [r.event_id for r in rows] == expected_ids()
    journal.close()


def test_cli_news_once(
    feed_server: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kafka_bootstrap: str,
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    feeds = "\n".join(
        f"  - {{name: {f.name}, url: '{f.url}', format: {f.format}}}"
        for f in news_config(feed_server).feeds
    )
    keywords = "\n".join(f"  {k}: [{', '.join(v)}]" for k, v in KEYWORDS.items())
    (config_dir / "news.yaml").write_text(f"feeds:\n{feeds}\nkeywords:\n{keywords}\n")
    assert main(["--config-dir", str(config_dir), "news", "--once", "--print"]) == 0
    captured = capsys.readouterr()
    lines = [msgspec.json.decode(line) for line in captured.out.splitlines()]
    assert [(d["source"], d["headline"]) for d in lines] == [
        (e.source, e.headline) for e in expected_events()
    ]
    err = " ".join(captured.err.split())
    assert "feed broken failed: FeedError: not well-formed XML" in err
    assert "news: 5 new, 3 duplicate(s) from 4 feed(s), 1 failed" in err

    prefix = f"t{secrets.token_hex(4)}."
    (config_dir / "kafka.yaml").write_text(f"topic_prefix: '{prefix}'\npartitions: 1\n")
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, partitions=1)
    create_topics(kafka)
    args = ["--config-dir", str(config_dir), "news", "--once", "--bootstrap", kafka_bootstrap]
    assert main(args) == 0
    consumer = EventConsumer(kafka, f"g{secrets.token_hex(4)}", ("news",), assign=True)
    try:
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            got.extend(consumer.poll_batch(100, 0.5))
    finally:
        consumer.close()
    assert sorted(c.event_id for c in got) == sorted(expected_ids())
    assert {c.event.headline for c in got if isinstance(c.event, News)} == {
        e.headline for e in expected_events()
    }
