"""The Redis health check's logic, in plain Python.

Nothing here imports the generated bindings (``wit_world``), so ``python3 -m unittest``
tests it without componentize-py. ``app.py`` is the component glue: it maps the WIT types
to and from the small types below.

Mirrors ``examples/redis-check/src/lib.rs`` function by function.
"""

import json
from typing import Callable, NamedTuple, Optional

# ----- verdicts and errors ----------------------------------------------------------------

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"


class Outcome(NamedTuple):
    """A verdict: ``kind`` is HEALTHY, DEGRADED or UNHEALTHY; ``reason`` is None when healthy."""

    kind: str
    reason: Optional[str] = None


def healthy() -> Outcome:
    return Outcome(HEALTHY)


def degraded(reason: str) -> Outcome:
    return Outcome(DEGRADED, reason)


def unhealthy(reason: str) -> Outcome:
    return Outcome(UNHEALTHY, reason)


class TcpFailure(Exception):
    """A ``tunnel-tcp`` error. ``kind`` is the WIT case name (``denied``, ``tunnel-down``,
    ``unreachable``, ``timeout``, ``closed``, ``invalid-argument``, ``other``); ``detail``
    is its payload, or None for the cases without one."""

    def __init__(self, kind: str, detail: Optional[str] = None):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


# ----- configuration ----------------------------------------------------------------------

#: The config keys, as in the policy file's ``[tunnel.health_check.config]`` table.
KEYS = ("connect_timeout_ms", "read_timeout_ms", "password")

U32_MAX = 2**32 - 1


class Settings(NamedTuple):
    """The check's settings."""

    #: Longest wait for the connection through the tunnel.
    connect_timeout_ms: int = 2000
    #: Longest wait for each read of a reply.
    read_timeout_ms: int = 2000
    #: Sent with ``AUTH`` before ``PING`` when set.
    password: Optional[str] = None


class ConfigError(ValueError):
    """``init``'s error: the message names the offending key and never holds the password."""


def parse_settings(text: str) -> Settings:
    """Parses ``init``'s JSON (the ``config`` table; ``{}`` when there is none). Every error
    names the key, and unknown keys are errors, so a typo fails ``ssm-tether check``."""
    if not text.strip():
        text = "{}"
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError("config must be a table (a JSON object)")
    fields = {}
    for key, item in value.items():
        if key in ("connect_timeout_ms", "read_timeout_ms"):
            fields[key] = _millis(key, item)
        elif key == "password":
            # Never echo the value: it is a secret.
            if not isinstance(item, str):
                raise ConfigError("`password` must be a string")
            if item == "":
                raise ConfigError("`password` must not be empty")
            fields[key] = item
        else:
            raise ConfigError(f"unknown config key `{key}`; known keys: {', '.join(KEYS)}")
    return Settings(**fields)


def _millis(key: str, value) -> int:
    """A timeout in milliseconds: a positive integer that fits in 32 bits."""
    # bool is an int in Python, but `true` is no number of milliseconds.
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= U32_MAX:
        return value
    raise ConfigError(
        f"`{key}` must be a positive integer (milliseconds), got {json.dumps(value)}"
    )


# ----- the Redis conversation -------------------------------------------------------------

#: ``PING`` as a RESP array of bulk strings, the form every Redis version accepts.
PING = b"*1\r\n$4\r\nPING\r\n"

#: The longest reply line read; ``+PONG`` and error replies are far shorter.
MAX_LINE = 512


def auth_command(password: str) -> bytes:
    """``AUTH <password>`` as a RESP array of bulk strings (the length counts bytes)."""
    secret = password.encode("utf-8")
    return b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)


def first_line(reply: bytes) -> Optional[bytes]:
    """The first line of ``reply`` without its CRLF, once it is complete."""
    end = reply.find(b"\r\n")
    return None if end < 0 else reply[:end]


def judge_ping(line: bytes) -> Outcome:
    """The verdict on the reply line to ``PING``."""
    if line == b"+PONG":
        return healthy()
    if line.startswith(b"-"):
        return degraded(f"Redis answered PING with an error: {escape(line)}")
    return unhealthy(f'not a Redis reply to PING: "{escape(line)}"')


def judge_auth(line: bytes) -> Optional[Outcome]:
    """The verdict on the reply line to ``AUTH``: None when it succeeded and ``PING`` comes next."""
    if line == b"+OK":
        return None
    if line.startswith(b"-"):
        return degraded(f"Redis rejected AUTH: {escape(line)}")
    return unhealthy(f'not a Redis reply to AUTH: "{escape(line)}"')


def connect_failed(error: TcpFailure, timeout_ms: int) -> Outcome:
    """The verdict when ``connect`` failed after waiting up to ``timeout_ms``."""
    if error.kind == "denied":
        return degraded(
            f"tunnel-tcp not granted: {error.detail}; "
            'add grants = ["tunnel-tcp"] to this health check'
        )
    if error.kind == "timeout":
        return unhealthy(f"connect through the tunnel timed out after {timeout_ms} ms")
    return unhealthy(f"connect through the tunnel failed: {describe(error)}")


def describe(error: TcpFailure) -> str:
    """A ``tunnel-tcp`` error in words."""
    kind, detail = error.kind, error.detail
    if kind == "denied":
        return f"denied ({detail})"
    if kind == "tunnel-down":
        return "the tunnel is not forwarding"
    if kind == "unreachable":
        return f"destination unreachable: {detail}"
    if kind == "timeout":
        return "timed out"
    if kind == "closed":
        return "connection closed"
    if kind == "invalid-argument":
        return f"invalid argument: {detail}"
    return detail if detail is not None else kind


def _escape_byte(b: int) -> str:
    # The same as Rust's `u8::escape_ascii` / `std::ascii::escape_default`.
    special = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x22: '\\"', 0x27: "\\'", 0x5C: "\\\\"}
    if b in special:
        return special[b]
    if 0x20 <= b < 0x7F:
        return chr(b)
    return f"\\x{b:02x}"


def escape(data: bytes) -> str:
    """Bytes from the network as printable text: at most 64 of them, ASCII as is, the rest
    escaped (``\\r``, ``\\n``, ``\\xNN``), ``...`` when cut."""
    text = "".join(_escape_byte(b) for b in data[:64])
    return text + "..." if len(data) > 64 else text


def converse(wire, settings: Settings, time_left: Callable[[], int]) -> Outcome:
    """Talks to Redis over ``wire``: ``AUTH`` when a password is set, then ``PING``.

    ``wire`` has ``write(data, timeout_ms)`` and ``read(max_bytes, timeout_ms) -> bytes``
    (empty: the server closed its side); both raise ``TcpFailure``. ``time_left`` returns
    the milliseconds left of the call's budget; no wait goes beyond it.
    """
    if settings.password is not None:
        line = _request(
            wire, "AUTH", auth_command(settings.password), settings.read_timeout_ms, time_left
        )
        if isinstance(line, Outcome):
            return line
        failed = judge_auth(line)
        if failed is not None:
            return failed
    line = _request(wire, "PING", PING, settings.read_timeout_ms, time_left)
    if isinstance(line, Outcome):
        return line
    return judge_ping(line)


def _request(wire, name: str, command: bytes, read_timeout_ms: int, time_left):
    """Sends ``command`` and returns the first line of the reply (without its CRLF), or the
    unhealthy ``Outcome`` explaining why there is none."""
    timeout = min(read_timeout_ms, time_left())
    if timeout <= 0:
        return unhealthy(f"no time left to send {name}")
    try:
        wire.write(command, timeout)
    except TcpFailure as error:
        return unhealthy(f"sending {name} failed: {describe(error)}")
    reply = b""
    while True:
        line = first_line(reply)
        if line is not None:
            return line
        if len(reply) >= MAX_LINE:
            return unhealthy(
                f"no line end in the first {MAX_LINE} bytes of the reply to {name}: "
                f'"{escape(reply)}"'
            )
        timeout = min(read_timeout_ms, time_left())
        if timeout <= 0:
            return unhealthy(
                f"the call budget ran out waiting for the reply to {name} "
                f'(got "{escape(reply)}")'
            )
        try:
            chunk = wire.read(MAX_LINE - len(reply), timeout)
        except TcpFailure as error:
            if error.kind == "timeout":
                return unhealthy(
                    f'no reply to {name} within {timeout} ms (got "{escape(reply)}")'
                )
            return unhealthy(f"reading the reply to {name} failed: {describe(error)}")
        if not chunk:
            return unhealthy(
                f"the server closed the connection before replying to {name} "
                f'(got "{escape(reply)}")'
            )
        reply += bytes(chunk)


def usable_budget_ms(budget_ms: int) -> int:
    """The part of the host's call budget the check uses: a tenth (at least 20 ms) is kept
    back so the verdict arrives before the host gives up on the call. 0 means "no budget
    given"."""
    if budget_ms == 0:
        return U32_MAX
    return max(0, budget_ms - max(budget_ms // 10, 20))
