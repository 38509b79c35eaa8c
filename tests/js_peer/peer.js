// Shared by the peer scripts: @sentry/node initialised with a transport that keeps every
// envelope it is given (no network), at the rate in the RATE environment variable.
'use strict';
const Sentry = require('@sentry/node');

const sent = [];

function init(release) {
  Sentry.init({
    dsn: 'http://0123456789abcdef0123456789abcdef@sentry.invalid/42',
    release,
    environment: 'node-env',
    tracesSampleRate: Number(process.env.RATE),
    transport: () => ({
      send: async (envelope) => {
        const [headers, items] = envelope;
        sent.push({ headers, items: items.map(([itemHeaders, payload]) => ({ itemHeaders, payload })) });
        return {};
      },
      flush: async () => true,
    }),
  });
  return Sentry;
}

// The transactions sent so far, each with its envelope's `trace` header (the DSC).
function transactions() {
  const out = [];
  for (const { headers, items } of sent) {
    for (const { itemHeaders, payload } of items) {
      if (itemHeaders.type === 'transaction') out.push({ dsc: headers.trace || null, event: payload });
    }
  }
  return out;
}

module.exports = { init, transactions };
