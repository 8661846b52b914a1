// Unit tests of resp.js, the check's logic: plain JavaScript, no componentize-js needed.
//
//     node --test        # in this folder (or: npm test)
//
// The same cases as the Rust example's `cargo test` and ../redis-check-py/test_app.py.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import * as resp from './resp.js';
import {
  MAX_LINE, PING, ConfigError, TcpFailure, authCommand, connectFailed, converse,
  defaultSettings, firstLine, judgeAuth, judgePing, parseSettings, usableBudgetMs,
} from './resp.js';

const b = (text) => new TextEncoder().encode(text);
const text = (bytes) => new TextDecoder().decode(bytes);
const latin1 = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));

/** A scripted server: each read takes the next answer (bytes, or a TcpFailure to throw);
 * none left means a timeout. */
class Script {
  constructor(chunks = [], writeError = undefined) {
    this.reads = [...chunks];
    this.writeError = writeError;
    this.written = new Uint8Array(0);
  }
  write(data, timeoutMs) {
    assert.ok(timeoutMs > 0);
    if (this.writeError) {
      const error = this.writeError;
      this.writeError = undefined;
      throw error;
    }
    this.written = new Uint8Array([...this.written, ...data]);
  }
  read(maxBytes, timeoutMs) {
    assert.ok(maxBytes > 0 && maxBytes <= 65536 && timeoutMs > 0);
    if (this.reads.length === 0) throw new TcpFailure('timeout');
    const answer = this.reads.shift();
    if (answer instanceof TcpFailure) throw answer;
    return answer;
  }
}

const plenty = () => 10_000;
const settings = () => defaultSettings();

function unhealthy(outcome, needle) {
  assert.equal(outcome.kind, 'unhealthy', JSON.stringify(outcome));
  assert.ok(outcome.reason.includes(needle), `${outcome.reason} does not contain ${needle}`);
}

describe('config', () => {
  test('defaults', () => {
    assert.deepEqual(parseSettings(''), defaultSettings());
    assert.deepEqual(parseSettings('  \n'), defaultSettings());
    assert.deepEqual(parseSettings('{}'), { connectTimeoutMs: 2000, readTimeoutMs: 2000, password: undefined });
  });

  test('all keys', () => {
    assert.deepEqual(
      parseSettings('{"connect_timeout_ms": 500, "read_timeout_ms": 700, "password": "pw"}'),
      { connectTimeoutMs: 500, readTimeoutMs: 700, password: 'pw' },
    );
    assert.equal(parseSettings('{"read_timeout_ms": 4294967295}').readTimeoutMs, 2 ** 32 - 1);
  });

  test('errors name the key', () => {
    for (const [json, needle] of [
      ['{"conect_timeout_ms": 5}', 'unknown config key `conect_timeout_ms`'],
      ['{"conect_timeout_ms": 5}', 'known keys: connect_timeout_ms, read_timeout_ms, password'],
      ['{"connect_timeout_ms": 0}', '`connect_timeout_ms`'],
      ['{"connect_timeout_ms": -5}', '`connect_timeout_ms`'],
      ['{"connect_timeout_ms": 1.5}', '`connect_timeout_ms`'],
      ['{"connect_timeout_ms": true}', 'got true'],
      ['{"read_timeout_ms": "2s"}', '`read_timeout_ms` must be a positive integer (milliseconds), got "2s"'],
      ['{"read_timeout_ms": 5000000000}', '`read_timeout_ms`'],
      ['{"password": 1234}', '`password` must be a string'],
      ['{"password": ""}', '`password` must not be empty'],
      ['[]', 'table'],
      ['"x"', 'table'],
      ['null', 'table'],
      ['{', 'not valid JSON'],
    ]) {
      assert.throws(() => parseSettings(json), (e) => e instanceof ConfigError && e.message.includes(needle), json);
    }
  });

  test('the password is never echoed', () => {
    assert.throws(
      () => parseSettings('{"password": "hunter2", "passwrd": "hunter3"}'),
      (e) => e.message.includes('`passwrd`') && !e.message.includes('hunter'),
    );
    assert.throws(() => parseSettings('{"password": ["hunter2"]}'), (e) => !e.message.includes('hunter'));
  });
});

describe('commands and replies', () => {
  test('commands are RESP arrays', () => {
    assert.equal(text(PING), '*1\r\n$4\r\nPING\r\n');
    assert.equal(text(authCommand('secret')), '*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n');
    // The bulk length counts bytes, not characters.
    assert.equal(text(authCommand('pä')), '*2\r\n$4\r\nAUTH\r\n$3\r\npä\r\n');
  });

  test('first line', () => {
    assert.equal(text(firstLine(b('+PONG\r\n'))), '+PONG');
    assert.equal(text(firstLine(b('+PONG\r\nmore'))), '+PONG');
    assert.equal(firstLine(b('+PONG\r')), undefined);
    assert.equal(firstLine(b('')), undefined);
  });

  test('PING replies', () => {
    assert.deepEqual(judgePing(b('+PONG')), { kind: 'healthy' });
    assert.deepEqual(judgePing(b('-NOAUTH Authentication required.')), {
      kind: 'degraded',
      reason: 'Redis answered PING with an error: -NOAUTH Authentication required.',
    });
    assert.deepEqual(judgePing(b('HTTP/1.1 400 Bad Request')), {
      kind: 'unhealthy',
      reason: 'not a Redis reply to PING: "HTTP/1.1 400 Bad Request"',
    });
    assert.equal(judgePing(b('+pong')).kind, 'unhealthy');
  });

  test('excerpts are escaped and cut', () => {
    assert.ok(judgePing(latin1('\x16\x03\x01')).reason.includes('\\x16\\x03\\x01'));
    assert.equal(resp.escape(latin1('\t"\'\\\xff')), '\\t\\"\\\'\\\\\\xff');
    assert.equal(resp.escape(b('a'.repeat(64))), 'a'.repeat(64));
    assert.equal(resp.escape(b('x'.repeat(100))), `${'x'.repeat(64)}...`);
  });

  test('AUTH replies', () => {
    assert.equal(judgeAuth(b('+OK')), undefined);
    const rejected = judgeAuth(b('-WRONGPASS invalid username-password pair'));
    assert.equal(rejected.kind, 'degraded');
    assert.ok(rejected.reason.includes('-WRONGPASS'));
    assert.equal(judgeAuth(b('+PONG')).kind, 'unhealthy');
  });
});

describe('the conversation', () => {
  test('PING/PONG is healthy, even in pieces', () => {
    const server = new Script([b('+PO'), b('NG\r'), b('\n')]);
    assert.deepEqual(converse(server, settings(), plenty), { kind: 'healthy' });
    assert.deepEqual(server.written, PING);
  });

  test('AUTH comes first; a rejection stops the check', () => {
    const withPassword = parseSettings('{"password": "hunter2"}');
    let server = new Script([b('+OK\r\n'), b('+PONG\r\n')]);
    assert.deepEqual(converse(server, withPassword, plenty), { kind: 'healthy' });
    assert.equal(text(server.written), text(authCommand('hunter2')) + text(PING));
    server = new Script([b('-WRONGPASS invalid password\r\n')]);
    const outcome = converse(server, withPassword, plenty);
    assert.equal(outcome.kind, 'degraded');
    assert.ok(outcome.reason.includes('-WRONGPASS') && !outcome.reason.includes('hunter2'));
    assert.deepEqual(server.written, authCommand('hunter2'), 'no PING after');
  });

  test('silence, closing, errors and endless lines are unhealthy', () => {
    unhealthy(converse(new Script(), settings(), plenty), 'no reply to PING within 2000 ms');
    unhealthy(converse(new Script([b('+PO'), b('')]), settings(), plenty), 'closed the connection before replying to PING (got "+PO")');
    unhealthy(
      converse(new Script([new TcpFailure('tunnel-down')]), settings(), plenty),
      'reading the reply to PING failed: the tunnel is not forwarding',
    );
    unhealthy(
      converse(new Script([], new TcpFailure('closed')), settings(), plenty),
      'sending PING failed: connection closed',
    );
    unhealthy(converse(new Script([b('a'.repeat(MAX_LINE))]), settings(), plenty), 'no line end in the first 512 bytes');
  });

  test('waits are capped by the budget', () => {
    unhealthy(converse(new Script(), settings(), () => 300), 'within 300 ms');
    let calls = 0;
    const timeLeft = () => (++calls > 2 ? 0 : 1000);
    unhealthy(converse(new Script([b('+PO')]), settings(), timeLeft), 'budget ran out');
    unhealthy(converse(new Script(), settings(), () => 0), 'no time left to send PING');
    assert.equal(usableBudgetMs(5000), 4500);
    assert.equal(usableBudgetMs(100), 80);
    assert.equal(usableBudgetMs(10), 0);
    assert.equal(usableBudgetMs(0), 2 ** 32 - 1);
  });
});

test('connect failures', () => {
  const denied = connectFailed(new TcpFailure('denied', 'tunnel-tcp'), 2000);
  assert.equal(denied.kind, 'degraded');
  assert.ok(denied.reason.includes('tunnel-tcp not granted: tunnel-tcp'));
  assert.ok(denied.reason.includes('grants = ["tunnel-tcp"]'));
  assert.deepEqual(connectFailed(new TcpFailure('timeout'), 2000), {
    kind: 'unhealthy',
    reason: 'connect through the tunnel timed out after 2000 ms',
  });
  assert.deepEqual(connectFailed(new TcpFailure('unreachable', 'connection refused'), 2000), {
    kind: 'unhealthy',
    reason: 'connect through the tunnel failed: destination unreachable: connection refused',
  });
  assert.ok(connectFailed(new TcpFailure('other', 'boom'), 2000).reason.includes('boom'));
});
