"""`redis-check-py`: the redis-check example health check, in Python (componentize-py).

World `ssm-tether:plugin/health-check`. On every run it opens a connection *through the
tunnel* (capability `tunnel-tcp`), sends `AUTH` when a password is configured, then `PING`,
and judges the first reply line (see README.md). The logic is in `resp.py`, plain Python
tested by `test_app.py`; this module only maps WIT types and calls the imports.

componentize-py finds the exports by name: the classes `Plugin` and `Health` below.
"""

import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, tunnel_tcp
from wit_world.imports.types import (
    LogLevel,
    PluginInfo,
    ProbeContext,
    ProbeOutcome,
    ProbeOutcome_Degraded,
    ProbeOutcome_Healthy,
    ProbeOutcome_Unhealthy,
)

import resp

VERSION = "0.1.0"

# Set by `init`; a plugin instance is single-threaded.
_settings = resp.Settings()

_TCP_ERROR_KINDS = {
    tunnel_tcp.TcpError_Denied: "denied",
    tunnel_tcp.TcpError_TunnelDown: "tunnel-down",
    tunnel_tcp.TcpError_Unreachable: "unreachable",
    tunnel_tcp.TcpError_Timeout: "timeout",
    tunnel_tcp.TcpError_Closed: "closed",
    tunnel_tcp.TcpError_InvalidArgument: "invalid-argument",
    tunnel_tcp.TcpError_Other: "other",
}


def _failure(err: Err) -> resp.TcpFailure:
    """An `Err(tcp-error)` raised by an import, as `resp.TcpFailure`."""
    error = err.value
    kind = _TCP_ERROR_KINDS.get(type(error), "other")
    return resp.TcpFailure(kind, getattr(error, "value", None))


def _to_wit(outcome: resp.Outcome) -> ProbeOutcome:
    if outcome.kind == resp.HEALTHY:
        return ProbeOutcome_Healthy()
    if outcome.kind == resp.DEGRADED:
        return ProbeOutcome_Degraded(outcome.reason)
    return ProbeOutcome_Unhealthy(outcome.reason)


class _Wire:
    """The `tunnel-tcp` connection as `resp.converse` wants it."""

    def __init__(self, conn: tunnel_tcp.Connection):
        self.conn = conn

    def write(self, data: bytes, timeout_ms: int) -> None:
        try:
            self.conn.write(data, timeout_ms)
        except Err as err:
            raise _failure(err) from None

    def read(self, max_bytes: int, timeout_ms: int) -> bytes:
        try:
            return self.conn.read(max_bytes, timeout_ms)
        except Err as err:
            raise _failure(err) from None


class Plugin(exports.Plugin):
    def describe(self) -> PluginInfo:
        return PluginInfo(
            name="redis-check-py",
            version=VERSION,
            description="Sends a Redis PING through the tunnel and expects +PONG (Python).",
        )

    def init(self, config: str) -> None:
        global _settings
        try:
            _settings = resp.parse_settings(config)
        except resp.ConfigError as e:
            raise Err(str(e)) from None


class Health(exports.Health):
    def check(self, context: ProbeContext) -> ProbeOutcome:
        settings = _settings
        budget_ms = resp.usable_budget_ms(context.budget_ms)
        started = time.monotonic()

        def time_left() -> int:
            elapsed_ms = int((time.monotonic() - started) * 1000)
            return max(0, min(budget_ms - elapsed_ms, resp.U32_MAX))

        timeout = min(settings.connect_timeout_ms, time_left())
        if timeout <= 0:
            return ProbeOutcome_Unhealthy("no time left to connect")
        try:
            conn = tunnel_tcp.connect(timeout)
        except Err as err:
            outcome = resp.connect_failed(_failure(err), timeout)
            if outcome.kind == resp.DEGRADED:
                # Only a missing grant: a configuration error the user must see.
                host.log(
                    LogLevel.ERROR,
                    f"redis-check-py on {context.tunnel.name}: {outcome.reason}",
                )
            return _to_wit(outcome)
        # Leaving the `with` drops the resource, which closes the connection.
        with conn:
            return _to_wit(resp.converse(_Wire(conn), settings, time_left))
