"""``--fallback`` with ``--workers 2`` and no sticky routing in front: a
request that lands on the worker that does not hold its session gets a 421
that says why (docs/fallback.md: the fallback needs sticky sessions)."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from .conftest import CliProcess, free_port, http_exchange

pytestmark = pytest.mark.timeout(90)


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    reply = http_exchange(port, request)
    return reply.status, json.loads(reply.body or b"{}")


def test_a_session_on_the_other_worker_is_a_clear_421(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process("--fallback", "--workers", "2", "--port", str(port), "--log-level", "debug")
    proc.wait_for(r"worker \d \(pid \d+\) is listening", timeout=20, count=2)
    status, opened = post(port, "/_fastws/open", {"path": "/demo", "transport": "polling"})
    assert status == 200, opened
    query = f"s={opened['session']}&t={opened['token']}"
    answers: dict[int, dict[str, Any]] = {}
    # SO_REUSEPORT spreads connections by hash: 30 tries all on one worker
    # has odds 2**-29.
    for _ in range(30):
        status, body = post(port, f"/_fastws/send?{query}", {"seq": 1, "messages": [], "ack": 0})
        answers.setdefault(status, body)
        if 200 in answers and 421 in answers:
            break
    assert set(answers) == {200, 421}, answers
    assert "sticky sessions" in answers[421]["error"], answers[421]
    assert proc.stop(signal.SIGTERM) == 0, proc.output
