"""`fastws serve` flags map onto Config fields with the documented defaults."""

from __future__ import annotations

import pytest

from fastws.cli import build_parser, config_from_args
from fastws.config import DEFAULTS


def _config(*flags: str):  # type: ignore[no-untyped-def]
    return config_from_args(build_parser().parse_args(["serve", *flags]))


def test_no_flags_gives_the_defaults() -> None:
    assert _config() == DEFAULTS


@pytest.mark.parametrize(
    "flags, field, value",
    [
        (["--max-message-size", "4MiB"], "max_message_size", 4 * 2**20),
        (["--ws-max-size", "none"], "max_message_size", None),
        (["--max-header-size", "8KiB"], "max_header_size", 8192),
        (["--write-limit", "1KiB"], "write_limit", 1024),
        (["--max-write-buffer", "2MiB"], "max_write_buffer", 2 * 2**20),
        (["--max-write-buffer", "none"], "max_write_buffer", None),
        (["--ws-max-queue", "4"], "max_queue", 4),
        (["--ws-ping-interval", "off"], "ping_interval", None),
        (["--ws-ping-timeout", "2.5"], "ping_timeout", 2.5),
        (["--open-timeout", "1"], "open_timeout", 1.0),
        (["--timeout-graceful-shutdown", "3"], "close_timeout", 3.0),
        (["--backlog", "16"], "backlog", 16),
        (["--no-access-log"], "access_log", False),
    ],
)
def test_flag_sets_its_field(flags: list[str], field: str, value: object) -> None:
    config = _config(*flags)
    assert getattr(config, field) == value
    # ...and nothing else.
    assert config.replace(**{field: getattr(DEFAULTS, field)}) == DEFAULTS


def test_bad_size_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--write-limit", "lots"])
    assert info.value.code == 2
