// A tiny fake Redis for test.sh: answers every RESP command with a fixed reply.
//
//     node fake_redis.js [--reply '-NOAUTH Authentication required.'] [--password PW]
//
// Prints the port it listens on (127.0.0.1, a free port) as the first line of stdout, then
// serves until killed. Default reply: `+PONG`. With --password, `AUTH PW` gets `+OK`, any
// other AUTH `-WRONGPASS ...`, and commands before a successful AUTH `-NOAUTH ...`.
// (The same server as ../redis-check-py/fake_redis.py, so this example needs only node.)

import net from 'node:net';

// `--reply VALUE` and `--password VALUE` (a value may start with `-`, like `-NOAUTH ...`).
const args = { reply: '+PONG', password: undefined };
for (let i = 2; i < process.argv.length; i += 2) {
  const name = process.argv[i].replace(/^--/, '');
  if (!(name in args) || i + 1 >= process.argv.length) {
    console.error(`usage: node fake_redis.js [--reply TEXT] [--password PW]`);
    process.exit(2);
  }
  args[name] = process.argv[i + 1];
}

/** Splits complete RESP arrays of bulk strings off `buffer`: [commands, rest]. */
function commands(buffer) {
  const done = [];
  for (;;) {
    const parts = [];
    let pos = 0;
    const line = () => {
      const end = buffer.indexOf('\r\n', pos);
      if (end < 0) return undefined;
      const text = buffer.subarray(pos, end).toString('latin1');
      pos = end + 2;
      return text;
    };
    const header = line();
    if (header === undefined || !header.startsWith('*')) return [done, buffer];
    let complete = true;
    for (let i = 0; i < Number(header.slice(1)); i++) {
      const length = line();
      if (length === undefined || pos + Number(length.slice(1)) + 2 > buffer.length) {
        complete = false;
        break;
      }
      parts.push(buffer.subarray(pos, pos + Number(length.slice(1))).toString('utf8'));
      pos += Number(length.slice(1)) + 2;
    }
    if (!complete) return [done, buffer];
    done.push(parts);
    buffer = buffer.subarray(pos);
  }
}

const server = net.createServer((conn) => {
  let authed = args.password === undefined;
  let buffer = Buffer.alloc(0);
  conn.on('error', () => {});
  conn.on('data', (data) => {
    let found;
    [found, buffer] = commands(Buffer.concat([buffer, data]));
    for (const parts of found) {
      const name = (parts[0] ?? '').toUpperCase();
      if (name === 'AUTH' && args.password !== undefined) {
        authed = parts.length === 2 && parts[1] === args.password;
        conn.write(authed ? '+OK\r\n' : '-WRONGPASS invalid password\r\n');
      } else if (!authed) {
        conn.write('-NOAUTH Authentication required.\r\n');
      } else {
        conn.write(`${args.reply}\r\n`);
      }
    }
  });
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
