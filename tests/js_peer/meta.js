// Reads [[sentry-trace, baggage], ...] (JSON, stdin): the values of our <meta> tags as a
// browser reads them. Prints what the JavaScript SDK continues from each (JSON, one line):
// the browser SDK starts its page-load trace from propagationContextFromHeaders().
'use strict';
const { propagationContextFromHeaders } = require('@sentry/core');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const out = JSON.parse(input).map(([sentryTrace, baggage]) => propagationContextFromHeaders(sentryTrace, baggage));
  console.log(JSON.stringify(out));
});
