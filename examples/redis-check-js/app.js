// `redis-check-js`: the redis-check example health check, in JavaScript (componentize-js).
//
// World `ssm-tether:plugin/health-check`. On every run it opens a connection *through the
// tunnel* (capability `tunnel-tcp`), sends `AUTH` when a password is configured, then
// `PING`, and judges the first reply line (see README.md). The logic is in `resp.js`, plain
// JavaScript tested by `test_resp.js`; this module only maps WIT types and calls the imports.
//
// componentize-js finds the exports by name: one object per exported interface, `plugin`
// and `health`, with a method per function (kebab-case names in camelCase).

import { log } from 'ssm-tether:plugin/host@0.1.1';
import { connect } from 'ssm-tether:plugin/tunnel-tcp@0.1.1';

import * as resp from './resp.js';

const VERSION = '0.1.0';

// Set by `init`; a plugin instance is single-threaded.
let settings = resp.defaultSettings();

/** Runs `call`; a `tunnel-tcp` error (thrown by the bindings as an error whose `payload` is
 * the WIT variant `{ tag, val }`) is rethrown as `resp.TcpFailure`. */
function tcp(call) {
  try {
    return call();
  } catch (e) {
    const error = e?.payload;
    if (error && typeof error.tag === 'string') throw new resp.TcpFailure(error.tag, error.val);
    throw e;
  }
}

/** A `resp` verdict as the WIT `probe-outcome`. */
function toWit(outcome) {
  if (outcome.kind === resp.HEALTHY) return { tag: 'healthy' };
  return { tag: outcome.kind, val: outcome.reason };
}

export const plugin = {
  describe() {
    return {
      name: 'redis-check-js',
      version: VERSION,
      description: 'Sends a Redis PING through the tunnel and expects +PONG (JavaScript).',
    };
  },

  // `result<_, string>`: returning is `ok`, throwing a string is `err(string)`.
  init(config) {
    try {
      settings = resp.parseSettings(config);
    } catch (e) {
      if (e instanceof resp.ConfigError) throw e.message;
      throw e;
    }
  },
};

export const health = {
  check(context) {
    const budgetMs = resp.usableBudgetMs(context.budgetMs);
    const started = performance.now();
    const timeLeft = () =>
      Math.max(0, Math.min(budgetMs - Math.floor(performance.now() - started), resp.U32_MAX));

    const timeout = Math.min(settings.connectTimeoutMs, timeLeft());
    if (timeout <= 0) return toWit(resp.unhealthy('no time left to connect'));
    let conn;
    try {
      conn = tcp(() => connect(timeout));
    } catch (error) {
      if (!(error instanceof resp.TcpFailure)) throw error;
      const outcome = resp.connectFailed(error, timeout);
      if (outcome.kind === resp.DEGRADED) {
        // Only a missing grant: a configuration error the user must see.
        log('error', `redis-check-js on ${context.tunnel.name}: ${outcome.reason}`);
      }
      return toWit(outcome);
    }
    const wire = {
      write: (data, timeoutMs) => tcp(() => conn.write(data, timeoutMs)),
      read: (maxBytes, timeoutMs) => tcp(() => conn.read(maxBytes, timeoutMs)),
    };
    try {
      return toWit(resp.converse(wire, settings, timeLeft));
    } finally {
      conn.close();
    }
  },
};
