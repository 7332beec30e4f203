// pg-boss in its fastest documented configuration for node 20 (v10): 8 work()
// loops, batches of 1000, polling every 0.5 s (its minimum). Throughput of N
// no-op jobs bulk-inserted (after ANALYZE: pg-boss is bimodal without
// statistics), or send->handler-start latency at a steady rate.
// Prints "RESULT <metric> <value>".
//   node pgboss.mjs --mode throughput|latency --db URL [--n N] [--rate R --seconds S]
import PgBoss from "pg-boss";
import { parseArgs, result, nowNs, seconds, client, waitAllDone, sendSteadily, percentiles } from "./common.mjs";

const args = parseArgs({ mode: "throughput", db: "", n: 100000, rate: 1000, seconds: 10, inflight: 10, loops: 8, batch: 1000 });
const queue = "noop";
const work = { batchSize: args.batch, pollingIntervalSeconds: 0.5 };
const countLeft = "SELECT count(*) FROM pgboss.job WHERE name = $1 AND state <> 'completed'";
const anyLeft = "SELECT EXISTS (SELECT 1 FROM pgboss.job WHERE name = $1 AND state <> 'completed') AS any";

const boss = new PgBoss({ connectionString: args.db, schedule: false });
boss.on("error", (e) => console.error("pg-boss:", e.message));
await boss.start();
if (!(await boss.getQueue(queue))) await boss.createQueue(queue);
const db = await client(args.db);
await db.query("DELETE FROM pgboss.job WHERE name = $1", [queue]);

if (args.mode === "throughput") {
  const t0 = nowNs();
  for (let i = 0; i < args.n; i += 10000) {
    const jobs = [];
    for (let j = i; j < Math.min(args.n, i + 10000); j++) jobs.push({ name: queue, data: {} });
    await boss.insert(jobs);
  }
  result("add_per_s", args.n / seconds(t0, nowNs()));
  await db.query("ANALYZE pgboss.job");
  const start = nowNs();
  for (let i = 0; i < args.loops; i++) await boss.work(queue, work, async () => {});
  const done = await waitAllDone(db, countLeft, anyLeft, [queue], 600);
  result("process_per_s", args.n / seconds(start, done));
  result("seconds", seconds(start, done));
} else {
  const lat = [];
  const handler = async (jobs) => {
    const now = nowNs();
    for (const job of jobs) lat.push(Number(now - BigInt(job.data.t)) / 1e6);
  };
  for (let i = 0; i < args.loops; i++) await boss.work(queue, work, handler);
  await db.query("ANALYZE pgboss.job");
  const { achieved } = await sendSteadily(args.rate, args.seconds, args.inflight, (k) => boss.send(queue, { k, t: String(nowNs()) }));
  await waitAllDone(db, countLeft, anyLeft, [queue], 120);
  const p = percentiles(lat);
  result("offered_per_s", args.rate);
  result("achieved_per_s", achieved);
  result("samples", lat.length);
  result("p50_ms", p.p50);
  result("p99_ms", p.p99);
  result("max_ms", p.max);
}
await boss.stop({ graceful: false, wait: true });
await db.end();
