"""Unit tests of resp.py, the check's logic: plain Python, no componentize-py needed.

    python3 -m unittest -v        # in this folder

The same cases as the Rust example's `cargo test` (examples/redis-check/src/lib.rs).
"""

import unittest
from collections import deque

import resp
from resp import (
    MAX_LINE,
    PING,
    ConfigError,
    Outcome,
    Settings,
    TcpFailure,
    auth_command,
    connect_failed,
    converse,
    first_line,
    judge_auth,
    judge_ping,
    parse_settings,
    usable_budget_ms,
)


class Script:
    """A scripted server: each read takes the next answer (bytes, or a TcpFailure to
    raise); none left means a timeout."""

    def __init__(self, *chunks, write_error=None):
        self.reads = deque(chunks)
        self.write_error = write_error
        self.written = b""

    def write(self, data, timeout_ms):
        assert timeout_ms > 0
        if self.write_error is not None:
            error, self.write_error = self.write_error, None
            raise error
        self.written += data

    def read(self, max_bytes, timeout_ms):
        assert 0 < max_bytes <= 65536 and timeout_ms > 0
        if not self.reads:
            raise TcpFailure("timeout")
        answer = self.reads.popleft()
        if isinstance(answer, TcpFailure):
            raise answer
        return answer


def plenty():
    return 10_000


class ConfigTest(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(parse_settings(""), Settings())
        self.assertEqual(parse_settings("  \n"), Settings())
        self.assertEqual(parse_settings("{}"), Settings(2000, 2000, None))

    def test_all_keys(self):
        self.assertEqual(
            parse_settings('{"connect_timeout_ms": 500, "read_timeout_ms": 700, "password": "pw"}'),
            Settings(connect_timeout_ms=500, read_timeout_ms=700, password="pw"),
        )
        self.assertEqual(parse_settings('{"read_timeout_ms": 4294967295}').read_timeout_ms, 2**32 - 1)

    def test_errors_name_the_key(self):
        for text, needle in [
            ('{"conect_timeout_ms": 5}', "unknown config key `conect_timeout_ms`"),
            ('{"conect_timeout_ms": 5}', "known keys: connect_timeout_ms, read_timeout_ms, password"),
            ('{"connect_timeout_ms": 0}', "`connect_timeout_ms`"),
            ('{"connect_timeout_ms": -5}', "`connect_timeout_ms`"),
            ('{"connect_timeout_ms": 1.5}', "`connect_timeout_ms`"),
            ('{"connect_timeout_ms": true}', "got true"),
            ('{"read_timeout_ms": "2s"}', '`read_timeout_ms` must be a positive integer (milliseconds), got "2s"'),
            ('{"read_timeout_ms": 5000000000}', "`read_timeout_ms`"),
            ('{"password": 1234}', "`password` must be a string"),
            ('{"password": ""}', "`password` must not be empty"),
            ("[]", "table"),
            ('"x"', "table"),
            ("{", "not valid JSON"),
        ]:
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as caught:
                    parse_settings(text)
                self.assertIn(needle, str(caught.exception))

    def test_password_is_never_echoed(self):
        with self.assertRaises(ConfigError) as caught:
            parse_settings('{"password": "hunter2", "passwrd": "hunter3"}')
        self.assertIn("`passwrd`", str(caught.exception))
        self.assertNotIn("hunter", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            parse_settings('{"password": ["hunter2"]}')
        self.assertNotIn("hunter", str(caught.exception))


class CommandsTest(unittest.TestCase):
    def test_commands_are_resp_arrays(self):
        self.assertEqual(PING, b"*1\r\n$4\r\nPING\r\n")
        self.assertEqual(auth_command("secret"), b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n")
        # The bulk length counts bytes, not characters.
        self.assertEqual(auth_command("pä"), "*2\r\n$4\r\nAUTH\r\n$3\r\npä\r\n".encode())


class JudgeTest(unittest.TestCase):
    def test_first_line(self):
        self.assertEqual(first_line(b"+PONG\r\n"), b"+PONG")
        self.assertEqual(first_line(b"+PONG\r\nmore"), b"+PONG")
        self.assertIsNone(first_line(b"+PONG\r"))
        self.assertIsNone(first_line(b""))

    def test_ping_replies(self):
        self.assertEqual(judge_ping(b"+PONG"), Outcome("healthy"))
        self.assertEqual(
            judge_ping(b"-NOAUTH Authentication required."),
            Outcome("degraded", "Redis answered PING with an error: -NOAUTH Authentication required."),
        )
        outcome = judge_ping(b"-ERR unknown command")
        self.assertEqual(outcome.kind, "degraded")
        self.assertIn("-ERR unknown command", outcome.reason)
        self.assertEqual(
            judge_ping(b"HTTP/1.1 400 Bad Request"),
            Outcome("unhealthy", 'not a Redis reply to PING: "HTTP/1.1 400 Bad Request"'),
        )
        self.assertEqual(judge_ping(b"+pong").kind, "unhealthy")

    def test_excerpts_are_escaped_and_cut(self):
        self.assertIn("\\x16\\x03\\x01", judge_ping(b"\x16\x03\x01").reason)
        self.assertEqual(resp.escape(b'\t"\'\\\xff'), "\\t\\\"\\'\\\\\\xff")
        self.assertEqual(resp.escape(b"a" * 64), "a" * 64)
        self.assertEqual(resp.escape(b"x" * 100), "x" * 64 + "...")
        self.assertIn("xxx...", judge_ping(b"x" * 100).reason)

    def test_auth_replies(self):
        self.assertIsNone(judge_auth(b"+OK"))
        outcome = judge_auth(b"-WRONGPASS invalid username-password pair")
        self.assertEqual(outcome.kind, "degraded")
        self.assertIn("-WRONGPASS", outcome.reason)
        outcome = judge_auth(b"+PONG")
        self.assertEqual(outcome.kind, "unhealthy")
        self.assertIn("AUTH", outcome.reason)


class ConverseTest(unittest.TestCase):
    def test_ping_pong_is_healthy_even_in_pieces(self):
        server = Script(b"+PO", b"NG\r", b"\n")
        self.assertEqual(converse(server, Settings(), plenty), Outcome("healthy"))
        self.assertEqual(server.written, PING)

    def test_auth_comes_first(self):
        with_password = parse_settings('{"password": "hunter2"}')
        server = Script(b"+OK\r\n", b"+PONG\r\n")
        self.assertEqual(converse(server, with_password, plenty), Outcome("healthy"))
        self.assertEqual(server.written, auth_command("hunter2") + PING)

    def test_auth_rejection_stops_the_check(self):
        with_password = parse_settings('{"password": "hunter2"}')
        server = Script(b"-WRONGPASS invalid password\r\n")
        outcome = converse(server, with_password, plenty)
        self.assertEqual(outcome.kind, "degraded")
        self.assertIn("-WRONGPASS", outcome.reason)
        self.assertNotIn("hunter2", outcome.reason)
        self.assertEqual(server.written, auth_command("hunter2"), "no PING after")

    def test_noauth_is_degraded(self):
        outcome = converse(Script(b"-NOAUTH Authentication required.\r\n"), Settings(), plenty)
        self.assertEqual(outcome.kind, "degraded")
        self.assertIn("-NOAUTH", outcome.reason)

    def assertUnhealthy(self, outcome, needle):
        self.assertEqual(outcome.kind, "unhealthy", outcome)
        self.assertIn(needle, outcome.reason)

    def test_silence_is_unhealthy(self):
        self.assertUnhealthy(converse(Script(), Settings(), plenty), "no reply to PING within 2000 ms")

    def test_closing_is_unhealthy(self):
        outcome = converse(Script(b"+PO", b""), Settings(), plenty)
        self.assertUnhealthy(outcome, "closed the connection")
        self.assertIn("+PO", outcome.reason)

    def test_read_and_write_errors_are_unhealthy(self):
        outcome = converse(Script(TcpFailure("tunnel-down")), Settings(), plenty)
        self.assertUnhealthy(outcome, "reading the reply to PING failed: the tunnel is not forwarding")
        outcome = converse(Script(write_error=TcpFailure("closed")), Settings(), plenty)
        self.assertUnhealthy(outcome, "sending PING failed: connection closed")

    def test_endless_line_is_unhealthy(self):
        outcome = converse(Script(b"a" * MAX_LINE), Settings(), plenty)
        self.assertUnhealthy(outcome, "no line end in the first 512 bytes")

    def test_waits_are_capped_by_the_budget(self):
        # 300 ms left: the read times out after 300 ms, not 2000.
        self.assertUnhealthy(converse(Script(), Settings(), lambda: 300), "within 300 ms")
        # The budget runs out between two reads.
        calls = []

        def time_left():
            calls.append(1)
            return 0 if len(calls) > 2 else 1000

        self.assertUnhealthy(converse(Script(b"+PO"), Settings(), time_left), "budget ran out")
        self.assertUnhealthy(converse(Script(), Settings(), lambda: 0), "no time left to send PING")

    def test_usable_budget(self):
        self.assertEqual(usable_budget_ms(5000), 4500)
        self.assertEqual(usable_budget_ms(100), 80)
        self.assertEqual(usable_budget_ms(10), 0)
        self.assertEqual(usable_budget_ms(0), 2**32 - 1)


class ConnectTest(unittest.TestCase):
    def test_connect_failures(self):
        outcome = connect_failed(TcpFailure("denied", "tunnel-tcp"), 2000)
        self.assertEqual(outcome.kind, "degraded")
        self.assertIn("tunnel-tcp not granted: tunnel-tcp", outcome.reason)
        self.assertIn('grants = ["tunnel-tcp"]', outcome.reason)
        self.assertEqual(
            connect_failed(TcpFailure("timeout"), 2000),
            Outcome("unhealthy", "connect through the tunnel timed out after 2000 ms"),
        )
        self.assertEqual(
            connect_failed(TcpFailure("unreachable", "connection refused"), 2000),
            Outcome("unhealthy", "connect through the tunnel failed: destination unreachable: connection refused"),
        )
        self.assertIn("boom", connect_failed(TcpFailure("other", "boom"), 2000).reason)


if __name__ == "__main__":
    unittest.main()
