// benches/e2e.rs's workload in Node.js: N "request" promises that each read the request id
// four times, await twice and await a nested async fn that reads it once more; `plain` passes
// the id as an argument, `als` carries it in an AsyncLocalStorage (`als.run(id, request)`).
//
// `node benches/e2e.mjs N REPS [SAMPLES]`: warms up, then prints the median tasks/s of each
// (samples alternate) as `plain <tasks/s>` and `als <tasks/s>`. benches/e2e.rs runs it once per
// round.
import { AsyncLocalStorage } from 'node:async_hooks';

const als = new AsyncLocalStorage();
let sink = 0;
// As a logger would: uses the id.
const log = (id) => {
  sink ^= id;
  return id;
};

async function nestedPlain(id) {
  return log(id);
}

async function requestPlain(id) {
  let seen = log(id);
  seen += log(id);
  await null;
  seen += log(id);
  await null;
  seen += log(id);
  return seen + (await nestedPlain(id));
}

async function nestedAls() {
  return log(als.getStore());
}

async function requestAls() {
  let seen = log(als.getStore());
  seen += log(als.getStore());
  await null;
  seen += log(als.getStore());
  await null;
  seen += log(als.getStore());
  return seen + (await nestedAls());
}

async function batch(kind, n) {
  const pending = new Array(n);
  for (let id = 0; id < n; id++) {
    pending[id] = kind === 'als' ? als.run(id, requestAls) : requestPlain(id);
  }
  const results = await Promise.all(pending);
  let sum = 0;
  for (const r of results) sum += r;
  if (sum !== (5 * n * (n - 1)) / 2) throw new Error(`${kind}: wrong sum ${sum}`);
}

async function sample(kind, n, reps) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < reps; i++) await batch(kind, n);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  // The storage's first `run` enables Node's promise hooks for every promise; disabling the
  // only storage turns them off again, so `plain` samples run without them.
  if (kind === 'als') als.disable();
  return (n * reps) / seconds;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const n = Number(process.argv[2] ?? 2000);
const reps = Number(process.argv[3] ?? 1);
const samples = Number(process.argv[4] ?? 3);
const rates = { plain: [], als: [] };
for (const kind of ['plain', 'als']) await sample(kind, n, reps); // warm-up (JIT)
for (let i = 0; i < samples; i++) {
  const order = i % 2 ? ['als', 'plain'] : ['plain', 'als'];
  for (const kind of order) rates[kind].push(await sample(kind, n, reps));
}
console.log(`plain ${median(rates.plain).toFixed(0)}`);
console.log(`als ${median(rates.als).toFixed(0)}`);
if (sink === 0.5) console.log(sink); // keeps `log`'s work
