// graphile-worker in its fast mode (local queue of 500, batched completion),
// as BENCHMARKING.md says: throughput of N no-op jobs bulk-added,
// add->handler-start latency at a steady rate, or that latency for urgent
// jobs (`priority` -1; lower runs first, default 0) added at a steady rate
// while a backlog of N drains. Prints "RESULT <metric> <value>".
//   node graphile.mjs --mode throughput|latency|urgent --db URL [--n N] [--rate R --seconds S]
import { run, makeWorkerUtils, Logger } from "graphile-worker";
import { parseArgs, result, nowNs, seconds, client, waitAllDone, sendSteadily, percentiles } from "./common.mjs";

const args = parseArgs({ mode: "throughput", db: "", n: 100000, rate: 1000, seconds: 10, inflight: 10, concurrency: 64 });
const silent = new Logger(() => () => {});  // its per-job INFO logging would dominate
const options = {
  connectionString: args.db,
  concurrency: args.concurrency,
  noHandleSignals: true,
  pollInterval: 2000,
  logger: silent,
  preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0 } },
};
const countLeft = "SELECT count(*) FROM graphile_worker._private_jobs";  // done jobs are deleted
const anyLeft = "SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs) AS any";

const utils = await makeWorkerUtils({ connectionString: args.db, logger: silent });
await utils.migrate();
const db = await client(args.db);
await db.query("DELETE FROM graphile_worker._private_jobs");

// N no-op jobs in bulk, 10k per call (the throughput case's setup).
async function addBacklog() {
  const t0 = nowNs();
  for (let i = 0; i < args.n; i += 10000) {
    const specs = [];
    for (let j = i; j < Math.min(args.n, i + 10000); j++) specs.push({ identifier: "noop", payload: {} });
    await utils.addJobs(specs);
  }
  result("add_per_s", args.n / seconds(t0, nowNs()));
  await db.query("ANALYZE graphile_worker._private_jobs");
}

if (args.mode === "throughput") {
  await addBacklog();
  const start = nowNs();
  const runner = await run({ ...options, taskList: { noop: async () => {} } });
  const done = await waitAllDone(db, countLeft, anyLeft, [], 600);
  await runner.stop();
  result("process_per_s", args.n / seconds(start, done));
  result("seconds", seconds(start, done));
} else if (args.mode === "urgent") {
  // As dmm_bench urgent: send from the backlog's first start to its last;
  // count only the urgent jobs added before its last start.
  await addBacklog();
  const urgent = [];  // [added ns, started ns]
  let started = 0, firstNs = 0n, lastNs = 0n, drained = false, first;
  const firstStarted = new Promise((resolve) => { first = resolve; });
  const start = nowNs();
  const runner = await run({
    ...options,
    taskList: {
      noop: async (payload) => {
        const now = nowNs();
        if (payload.t) return void urgent.push([BigInt(payload.t), now]);
        if (++started === 1) { firstNs = now; first(); }
        if (started === args.n) { lastNs = now; drained = true; }
      },
    },
  });
  await firstStarted;
  const { sent } = await sendSteadily(args.rate, 600, args.inflight,
    (k) => utils.addJob("noop", { k, t: String(nowNs()) }, { priority: -1 }), () => drained);
  await waitAllDone(db, countLeft, anyLeft, [], 120);
  await runner.stop();
  const during = urgent.filter(([added]) => added <= lastNs).map(([added, at]) => Number(at - added) / 1e6);
  const p = percentiles(during);
  const drainS = seconds(firstNs, lastNs);
  result("backlog", args.n);
  result("backlog_per_s", args.n / seconds(start, lastNs));
  result("drain_seconds", drainS);
  result("urgent_sent", sent);
  result("urgent_per_s", during.length / drainS);
  result("samples", during.length);
  result("p50_ms", p.p50);
  result("p99_ms", p.p99);
  result("max_ms", p.max);
  if (urgent.length < sent) throw new Error(`${sent} urgent jobs added, ${urgent.length} started`);
} else {
  const lat = [];
  const runner = await run({
    ...options,
    taskList: { noop: async (payload) => { lat.push(Number(nowNs() - BigInt(payload.t)) / 1e6); } },
  });
  const { achieved } = await sendSteadily(args.rate, args.seconds, args.inflight, (k) => utils.addJob("noop", { k, t: String(nowNs()) }));
  await waitAllDone(db, countLeft, anyLeft, [], 120);
  await runner.stop();
  const p = percentiles(lat);
  result("offered_per_s", args.rate);
  result("achieved_per_s", achieved);
  result("samples", lat.length);
  result("p50_ms", p.p50);
  result("p99_ms", p.p99);
  result("max_ms", p.max);
}
await db.end();
await utils.release();
