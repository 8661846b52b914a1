"""A tiny fake Redis for test.sh: answers every RESP command with a fixed reply.

    python3 fake_redis.py [--reply '-NOAUTH Authentication required.'] [--password PW]

Prints the port it listens on (127.0.0.1, a free port) as the first line of stdout, then
serves until killed. Default reply: `+PONG`. With --password, `AUTH PW` gets `+OK`, any
other AUTH `-WRONGPASS ...`, and commands before a successful AUTH `-NOAUTH ...`.
"""

import argparse
import socket
import threading


def commands(buffer: bytes):
    """Splits complete RESP arrays of bulk strings off `buffer`: (commands, rest)."""
    done = []
    while True:
        parts, pos = [], 0
        try:
            end = buffer.index(b"\r\n", pos)
            if not buffer.startswith(b"*"):
                raise ValueError("not an array")
            count = int(buffer[1:end])
            pos = end + 2
            for _ in range(count):
                end = buffer.index(b"\r\n", pos)
                length = int(buffer[pos + 1 : end])
                start = end + 2
                if len(buffer) < start + length + 2:
                    raise IndexError
                parts.append(buffer[start : start + length])
                pos = start + length + 2
        except (ValueError, IndexError):
            return done, buffer
        done.append(parts)
        buffer = buffer[pos:]


def serve(conn: socket.socket, reply: bytes, password):
    authed = password is None
    buffer = b""
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            found, buffer = commands(buffer + data)
            for parts in found:
                name = parts[0].upper() if parts else b""
                if name == b"AUTH" and password is not None:
                    authed = parts[1:] == [password.encode()]
                    conn.sendall(b"+OK\r\n" if authed else b"-WRONGPASS invalid password\r\n")
                elif not authed:
                    conn.sendall(b"-NOAUTH Authentication required.\r\n")
                else:
                    conn.sendall(reply + b"\r\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reply", default="+PONG")
    parser.add_argument("--password")
    args = parser.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(
            target=serve, args=(conn, args.reply.encode(), args.password), daemon=True
        ).start()


if __name__ == "__main__":
    main()
