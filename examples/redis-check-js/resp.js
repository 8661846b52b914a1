// The Redis health check's logic, in plain JavaScript.
//
// Nothing here imports the component's bindings (`ssm-tether:plugin/...`), so
// `node --test` tests it with no toolchain but node. `app.js` is the component glue: it maps
// the WIT types to and from the small types below.
//
// Mirrors `examples/redis-check/src/lib.rs` (and `../redis-check-py/resp.py`) function by
// function.

// ----- verdicts and errors ----------------------------------------------------------------

export const HEALTHY = 'healthy';
export const DEGRADED = 'degraded';
export const UNHEALTHY = 'unhealthy';

// A verdict is `{ kind, reason }`: `kind` is HEALTHY, DEGRADED or UNHEALTHY, `reason` is
// undefined when healthy. (The WIT `probe-outcome` is `{ tag, val }`; app.js converts.)
export const healthy = () => ({ kind: HEALTHY });
export const degraded = (reason) => ({ kind: DEGRADED, reason });
export const unhealthy = (reason) => ({ kind: UNHEALTHY, reason });

/** A `tunnel-tcp` error. `kind` is the WIT case name (`denied`, `tunnel-down`,
 * `unreachable`, `timeout`, `closed`, `invalid-argument`, `other`); `detail` is its
 * payload, or undefined for the cases without one. */
export class TcpFailure extends Error {
  constructor(kind, detail) {
    super(detail === undefined ? kind : `${kind}: ${detail}`);
    this.kind = kind;
    this.detail = detail;
  }
}

// ----- configuration ----------------------------------------------------------------------

/** The config keys, as in the policy file's `[tunnel.health_check.config]` table. */
export const KEYS = ['connect_timeout_ms', 'read_timeout_ms', 'password'];

export const U32_MAX = 2 ** 32 - 1;

/** The check's settings, with their defaults. */
export function defaultSettings() {
  return {
    connectTimeoutMs: 2000, // longest wait for the connection through the tunnel
    readTimeoutMs: 2000, // longest wait for each read of a reply
    password: undefined, // sent with AUTH before PING when set
  };
}

/** `init`'s error: the message names the offending key and never holds the password. */
export class ConfigError extends Error {}

/** Parses `init`'s JSON (the `config` table; `{}` when there is none). Every error names
 * the key, and unknown keys are errors, so a typo fails `ssm-tether check`. */
export function parseSettings(text) {
  if (text.trim() === '') text = '{}';
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config is not valid JSON: ${e.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError('config must be a table (a JSON object)');
  }
  const settings = defaultSettings();
  for (const [key, item] of Object.entries(value)) {
    if (key === 'connect_timeout_ms') {
      settings.connectTimeoutMs = millis(key, item);
    } else if (key === 'read_timeout_ms') {
      settings.readTimeoutMs = millis(key, item);
    } else if (key === 'password') {
      // Never echo the value: it is a secret.
      if (typeof item !== 'string') throw new ConfigError('`password` must be a string');
      if (item === '') throw new ConfigError('`password` must not be empty');
      settings.password = item;
    } else {
      throw new ConfigError(`unknown config key \`${key}\`; known keys: ${KEYS.join(', ')}`);
    }
  }
  return settings;
}

/** A timeout in milliseconds: a positive integer that fits in 32 bits. */
function millis(key, value) {
  if (Number.isInteger(value) && value > 0 && value <= U32_MAX) return value;
  throw new ConfigError(
    `\`${key}\` must be a positive integer (milliseconds), got ${JSON.stringify(value)}`,
  );
}

// ----- the Redis conversation -------------------------------------------------------------

const encoder = new TextEncoder();
const bytes = (text) => encoder.encode(text);

/** `PING` as a RESP array of bulk strings, the form every Redis version accepts. */
export const PING = bytes('*1\r\n$4\r\nPING\r\n');

/** The longest reply line read; `+PONG` and error replies are far shorter. */
export const MAX_LINE = 512;

/** `AUTH <password>` as a RESP array of bulk strings (the length counts UTF-8 bytes). */
export function authCommand(password) {
  const secret = bytes(password);
  return concat(bytes(`*2\r\n$4\r\nAUTH\r\n$${secret.length}\r\n`), secret, bytes('\r\n'));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equals(a, text) {
  return a.length === text.length && a.every((b, i) => b === text.charCodeAt(i));
}

/** The first line of `reply` (a Uint8Array) without its CRLF, once it is complete. */
export function firstLine(reply) {
  for (let i = 0; i + 1 < reply.length; i++) {
    if (reply[i] === 0x0d && reply[i + 1] === 0x0a) return reply.subarray(0, i);
  }
  return undefined;
}

/** The verdict on the reply line to `PING`. */
export function judgePing(line) {
  if (equals(line, '+PONG')) return healthy();
  if (line[0] === 0x2d /* - */) return degraded(`Redis answered PING with an error: ${escape(line)}`);
  return unhealthy(`not a Redis reply to PING: "${escape(line)}"`);
}

/** The verdict on the reply line to `AUTH`: undefined when it succeeded and `PING` comes next. */
export function judgeAuth(line) {
  if (equals(line, '+OK')) return undefined;
  if (line[0] === 0x2d) return degraded(`Redis rejected AUTH: ${escape(line)}`);
  return unhealthy(`not a Redis reply to AUTH: "${escape(line)}"`);
}

/** The verdict when `connect` failed after waiting up to `timeoutMs`. */
export function connectFailed(error, timeoutMs) {
  if (error.kind === 'denied') {
    return degraded(
      `tunnel-tcp not granted: ${error.detail}; add grants = ["tunnel-tcp"] to this health check`,
    );
  }
  if (error.kind === 'timeout') {
    return unhealthy(`connect through the tunnel timed out after ${timeoutMs} ms`);
  }
  return unhealthy(`connect through the tunnel failed: ${describe(error)}`);
}

/** A `tunnel-tcp` error in words. */
export function describe(error) {
  const { kind, detail } = error;
  switch (kind) {
    case 'denied': return `denied (${detail})`;
    case 'tunnel-down': return 'the tunnel is not forwarding';
    case 'unreachable': return `destination unreachable: ${detail}`;
    case 'timeout': return 'timed out';
    case 'closed': return 'connection closed';
    case 'invalid-argument': return `invalid argument: ${detail}`;
    default: return detail ?? kind;
  }
}

const SPECIAL = { 0x09: '\\t', 0x0a: '\\n', 0x0d: '\\r', 0x22: '\\"', 0x27: "\\'", 0x5c: '\\\\' };

/** Bytes from the network as printable text: at most 64 of them, ASCII as is, the rest
 * escaped (`\r`, `\n`, `\xNN`), `...` when cut. The same as Rust's `escape_default`. */
export function escape(data) {
  let text = '';
  for (const b of data.subarray(0, 64)) {
    if (SPECIAL[b] !== undefined) text += SPECIAL[b];
    else if (b >= 0x20 && b < 0x7f) text += String.fromCharCode(b);
    else text += `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return data.length > 64 ? `${text}...` : text;
}

/** Talks to Redis over `wire`: `AUTH` when a password is set, then `PING`.
 *
 * `wire` has `write(data, timeoutMs)` and `read(maxBytes, timeoutMs) -> Uint8Array`
 * (empty: the server closed its side); both throw `TcpFailure`. `timeLeft()` returns the
 * milliseconds left of the call's budget; no wait goes beyond it. */
export function converse(wire, settings, timeLeft) {
  if (settings.password !== undefined) {
    const line = request(wire, 'AUTH', authCommand(settings.password), settings.readTimeoutMs, timeLeft);
    if (!(line instanceof Uint8Array)) return line;
    const failed = judgeAuth(line);
    if (failed !== undefined) return failed;
  }
  const line = request(wire, 'PING', PING, settings.readTimeoutMs, timeLeft);
  if (!(line instanceof Uint8Array)) return line;
  return judgePing(line);
}

/** Sends `command` and returns the first line of the reply (without its CRLF), or the
 * unhealthy verdict explaining why there is none. */
function request(wire, name, command, readTimeoutMs, timeLeft) {
  let timeout = Math.min(readTimeoutMs, timeLeft());
  if (timeout <= 0) return unhealthy(`no time left to send ${name}`);
  try {
    wire.write(command, timeout);
  } catch (error) {
    if (!(error instanceof TcpFailure)) throw error;
    return unhealthy(`sending ${name} failed: ${describe(error)}`);
  }
  let reply = new Uint8Array(0);
  for (;;) {
    const line = firstLine(reply);
    if (line !== undefined) return line;
    if (reply.length >= MAX_LINE) {
      return unhealthy(
        `no line end in the first ${MAX_LINE} bytes of the reply to ${name}: "${escape(reply)}"`,
      );
    }
    timeout = Math.min(readTimeoutMs, timeLeft());
    if (timeout <= 0) {
      return unhealthy(
        `the call budget ran out waiting for the reply to ${name} (got "${escape(reply)}")`,
      );
    }
    let chunk;
    try {
      chunk = wire.read(MAX_LINE - reply.length, timeout);
    } catch (error) {
      if (!(error instanceof TcpFailure)) throw error;
      if (error.kind === 'timeout') {
        return unhealthy(`no reply to ${name} within ${timeout} ms (got "${escape(reply)}")`);
      }
      return unhealthy(`reading the reply to ${name} failed: ${describe(error)}`);
    }
    if (chunk.length === 0) {
      return unhealthy(
        `the server closed the connection before replying to ${name} (got "${escape(reply)}")`,
      );
    }
    reply = concat(reply, chunk);
  }
}

/** The part of the host's call budget the check uses: a tenth (at least 20 ms) is kept back
 * so the verdict arrives before the host gives up on the call. 0 means "no budget given". */
export function usableBudgetMs(budgetMs) {
  if (budgetMs === 0) return U32_MAX;
  return Math.max(0, budgetMs - Math.max(Math.floor(budgetMs / 10), 20));
}
