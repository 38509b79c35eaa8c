// A Node job traced by @sentry/node: inside one span it calls TARGET with fetch and with
// http.get, then prints (last line, JSON) its root span, what each call answered and the
// transactions it sent. Environment: TARGET, RATE.
'use strict';
const http = require('http');
const { init, transactions } = require('./peer');

const Sentry = init('node-client@1');

function viaHttp(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => resolve(JSON.parse(body)));
    }).on('error', reject);
  });
}

async function main() {
  const out = { calls: [] };
  await Sentry.startSpan({ name: 'node-job', op: 'task', forceTransaction: true }, async (span) => {
    const ctx = span.spanContext();
    out.root = { traceId: ctx.traceId, spanId: ctx.spanId };
    const response = await fetch(process.env.TARGET);
    out.calls.push({ via: 'fetch', answer: await response.json() });
    out.calls.push({ via: 'http', answer: await viaHttp(process.env.TARGET) });
  });
  await Sentry.flush(5000);
  out.sent = transactions();
  console.log(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
