"""The kernel is pure: it imports no I/O, reads no wall clock, draws no unseeded randomness.

Walks every module under kernel/ with ``ast``; imports must come from an allowlist and a
few call patterns are refused outright. The checker is tested on bad snippets too, so
this test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KERNEL = Path(__file__).resolve().parents[1] / "kernel"

ALLOWED_MODULES = {
    "__future__",
    "abc",
    "bisect",
    "collections",
    "dataclasses",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "typing",
    "msgspec",
    "numpy",
    "sortedcontainers",
    "kernel",
}
ALLOWED_NUMPY_RANDOM = {"Generator", "PCG64"}
FORBIDDEN_CALLS = {"open", "input", "print", "exec", "eval", "__import__"}
FORBIDDEN_METHOD_CALLS = {
    "now",
    "utcnow",
    "today",
    "time",
    "time_ns",
    "perf_counter",
    "monotonic",
    "uuid4",
    "urandom",
    "getenv",
}
FORBIDDEN_ATTRS = {"environ"}


def violations(source: str, name: str = "<src>") -> list[str]:
    found: list[str] = []
    tree = ast.parse(source, name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""] if node.level == 0 else []
        else:
            mods = []
        for mod in mods:
            if mod.split(".")[0] not in ALLOWED_MODULES:
                found.append(f"{name}:{node.lineno}: imports {mod}")
        call = node.func if isinstance(node, ast.Call) else None
        if isinstance(call, ast.Name) and call.id in FORBIDDEN_CALLS:
            found.append(f"{name}:{node.lineno}: calls {call.id}()")
        if isinstance(call, ast.Attribute) and call.attr in FORBIDDEN_METHOD_CALLS:
            found.append(f"{name}:{node.lineno}: calls .{call.attr}()")
        if isinstance(node, ast.Attribute):
            if node.attr in FORBIDDEN_ATTRS:
                found.append(f"{name}:{node.lineno}: uses .{node.attr}")
            v = node.value
            if (
                isinstance(v, ast.Attribute)
                and v.attr == "random"
                and isinstance(v.value, ast.Name)
                and v.value.id in {"np", "numpy"}
                and node.attr not in ALLOWED_NUMPY_RANDOM
            ):
                found.append(f"{name}:{node.lineno}: uses numpy.random.{node.attr}")
    return found


def kernel_files() -> list[Path]:
    return sorted(KERNEL.rglob("*.py"))


def test_kernel_has_modules() -> None:
    names = {p.name for p in kernel_files()}
    assert {"events.py", "book.py", "engine.py", "sync.py", "instruments.py"} <= names


@pytest.mark.parametrize("path", kernel_files(), ids=lambda p: p.name)
def test_kernel_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(), path.name) == []


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import time", "imports time"),
        ("import random", "imports random"),
        ("from uuid import uuid4", "imports uuid"),
        ("import sqlite3", "imports sqlite3"),
        ("import os", "imports os"),
        ("from confluent_kafka import Producer", "imports confluent_kafka"),
        ("import datetime", "imports datetime"),
        ("x = open('f')", "calls open()"),
        ("import numpy as np\nx = np.random.rand()", "uses numpy.random.rand"),
        ("import numpy as np\nx = np.random.default_rng()", "uses numpy.random.default_rng"),
        ("from kernel import x\nx.datetime.now()", "calls .now()"),
        ("from kernel import x\nx.time()", "calls .time()"),
        ("from kernel import x\ny = x.environ['A']", "uses .environ"),
    ],
)
def test_checker_catches(snippet: str, expected: str) -> None:
    assert any(expected in v for v in violations(snippet))


def test_checker_allows_seeded_generator() -> None:
    src = "import numpy as np\nrng = np.random.Generator(np.random.PCG64(7))"
    assert violations(src) == []
