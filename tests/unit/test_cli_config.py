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


def test_every_config_field_has_a_flag() -> None:
    """Flags are generated from Config: a new field gets one by itself."""
    import dataclasses

    from fastws.config import Config

    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {a.dest for a in serve._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= dests


@pytest.mark.parametrize(
    "flags, field, value",
    [
        (["--server-header", "my-app/2"], "server_header", "my-app/2"),
        (["--server-header", "none"], "server_header", None),
        (["--host", "::1"], "host", "::1"),
        (["--port", "9999"], "port", 9999),
        (["--uds", "/tmp/x.sock"], "uds", "/tmp/x.sock"),
        (["--workers", "3"], "workers", 3),
        (["--loop", "asyncio"], "loop", "asyncio"),
        (["--log-level", "debug"], "log_level", "debug"),
        (["--ws-per-message-deflate", "false"], "compression", None),
        (["--ws-deflate-level", "9"], "deflate_level", 9),
        (["--ws-deflate-client-max-window-bits", "none"], "deflate_client_max_window_bits", None),
        (["--ws-deflate-server-no-context-takeover", "true"], "deflate_server_no_context_takeover", True),
        (["--ws-max-queue", "none"], "max_queue", None),
    ],
)
def test_more_flags_set_their_field(flags: list[str], field: str, value: object) -> None:
    config = _config(*flags)
    assert getattr(config, field) == value
    assert config.replace(**{field: getattr(DEFAULTS, field)}) == DEFAULTS


@pytest.mark.parametrize(
    "flags",
    [
        # A limit that cannot be off: "none" is an error, never the default.
        ["--max-header-size", "none"],
        ["--write-limit", "off"],
        ["--port", "none"],
        ["--ws-per-message-deflate", "maybe"],
        ["--loop", "trio"],
    ],
)
def test_value_a_field_cannot_take_is_a_usage_error(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", *flags])
    assert info.value.code == 2
    assert flags[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--workers", "0"], "--workers must"),
        (["--max-header-size", "0"], "--max-header-size must"),
        (["--ws-ping-timeout", "-1"], "--ws-ping-timeout must be a positive number of seconds, or 'none' for off"),
        (["--ws-deflate-level", "12"], "--ws-deflate-level must"),
    ],
)
def test_out_of_range_value_names_the_option(flags: list[str], word: str) -> None:
    from fastws.cli import TargetError

    with pytest.raises(TargetError, match=word):
        _config(*flags)


def test_process_options_are_refused_by_serve() -> None:
    import fastws

    for name in ("workers", "loop", "log_level"):
        with pytest.raises(TypeError, match=name):
            fastws.serve(fastws.Handler, "127.0.0.1", 0, **{name: 2})
