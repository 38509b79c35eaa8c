// A Node service traced by @sentry/node. Prints {"port": N} once listening; every request
// is answered with the trace headers it carried and the service's active span. On SIGTERM
// it prints the transactions it sent (JSON, one line) and exits. Environment: RATE.
'use strict';
const http = require('http');
const { init, transactions } = require('./peer');

const Sentry = init('node-service@1');

const server = http.createServer((req, res) => {
  const span = Sentry.getActiveSpan();
  const ctx = span ? span.spanContext() : null;
  const body = JSON.stringify({
    headers: req.headers,
    span: ctx ? { traceId: ctx.traceId, spanId: ctx.spanId } : null,
  });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});

server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ port: server.address().port }));
});

process.on('SIGTERM', async () => {
  server.close();
  await Sentry.flush(5000);
  // exit once written: a pipe write may still be pending when process.exit() runs
  process.stdout.write(`${JSON.stringify({ sent: transactions() })}\n`, () => process.exit(0));
});
