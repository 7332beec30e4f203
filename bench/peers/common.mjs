// Shared by graphile.mjs and pgboss.mjs: arguments, results, DB polling, steady-rate sending.
import pg from "pg";

// --key value pairs from the command line.
export function parseArgs(defaults) {
  const args = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in defaults)) throw new Error(`unknown option --${key}`);
    args[key] = typeof defaults[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  return args;
}

export function result(metric, value) {
  console.log(`RESULT ${metric} ${Number(value).toPrecision(6)}`);
}

export const nowNs = () => process.hrtime.bigint();
export const seconds = (a, b) => Number(b - a) / 1e9;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function client(connectionString) {
  const c = new pg.Client({ connectionString });
  await c.connect();
  return c;
}

// Waits until no job is left incomplete in the database; returns the hrtime
// when that was seen. Counting costs the server real CPU, so `countLeft` (SQL
// giving `count`) runs at most every 500 ms, to estimate when the work ends,
// and in between `anyLeft` (SQL giving `any`) only asks whether any job is
// left, more often near the end (as dmm_bench does).
export async function waitAllDone(db, countLeft, anyLeft, params, timeoutS) {
  const deadline = nowNs() + BigInt(timeoutS * 1e9);
  let perMs = 0, counted = -1, countedAt = nowNs();
  while (nowNs() < deadline) {
    const now = nowNs();
    let left;
    if (counted < 0 || seconds(countedAt, now) >= 0.5) {
      left = Number((await db.query(countLeft, params)).rows[0].count);
      if (counted > left) perMs = (counted - left) / (seconds(countedAt, now) * 1000);
      counted = left;
      countedAt = now;
    } else {
      left = (await db.query(anyLeft, params)).rows[0].any ? 1 : 0;
    }
    const at = nowNs();
    if (left === 0) return at;
    let pause = 50;
    if (perMs > 0) pause = Math.max(0, counted / perMs - seconds(countedAt, at) * 1000) / 2;
    await sleep(Math.min(250, Math.max(5, pause)));
  }
  throw new Error(`jobs not complete after ${timeoutS}s`);
}

// Calls send(k) for k = 0, 1, ... at `rate` per second on a fixed schedule
// for `durationS` seconds (open loop: a slow send does not delay the next
// ones' schedule), at most `inFlight` at once; sends that could not start
// within the duration, or once stop() returns true, are not made. Returns
// { sent, achieved rate }.
export async function sendSteadily(rate, durationS, inFlight, send, stop = () => false) {
  const start = nowNs();
  const total = Math.max(1, Math.round(rate * durationS));
  let next = 0, running = 0, sent = 0, failed = null;
  await new Promise((resolve) => {
    const tick = () => {
      if (failed) return resolve();
      const elapsed = seconds(start, nowNs());
      const over = elapsed >= durationS || stop();
      const due = over ? next : Math.min(total, Math.floor(elapsed * rate) + 1);
      if (over) next = total;  // stop: the rest is not sent
      while (next < due && running < inFlight) {
        const k = next++;
        running++;
        sent++;
        send(k).then(
          () => { running--; },
          (e) => { failed = e; running--; },
        );
      }
      if (next >= total) {
        const drain = () => (running === 0 ? resolve() : setTimeout(drain, 1));
        return drain();
      }
      // Sleep until the next one is due, unless it is due within 2 ms (timers
      // fire about 1 ms late): polling with setImmediate would spin a core
      // that the worker in this process and PostgreSQL need.
      const untilNextMs = (next / rate - seconds(start, nowNs())) * 1000;
      if (running < inFlight && untilNextMs > 2) setTimeout(tick, untilNextMs - 1);
      else setImmediate(tick);
    };
    tick();
  });
  if (failed) throw failed;
  return { sent, achieved: sent / seconds(start, nowNs()) };
}

export function percentiles(ms) {
  const v = [...ms].sort((a, b) => a - b);
  const at = (p) => v[Math.min(v.length - 1, Math.round(p * (v.length - 1)))];
  return { p50: at(0.5), p99: at(0.99), max: v[v.length - 1] };
}
