// A legacy app that subscribes to events with the official SDKs (npm @ringcentral/sdk and
// @ringcentral/subscriptions, i.e. @rc-ex/ws), pointed at the proxy and otherwise unchanged.
// Run by tests/events/test_events_sdk_e2e.py. Environment: SERVER (the proxy URL), CLIENT_ID,
// CLIENT_SECRET, JWT, FILTERS (a JSON list of event filters). Prints JSON lines on stdout:
// {"ready": subscriptionId} once subscribed, {"event": body} per notification, {"close": code}
// when a socket of the SDK closes; on "exit" (stdin) {"summary": {...}} and exits.
'use strict';
const readline = require('readline');
const { SDK } = require('@ringcentral/sdk');
const { Subscriptions } = require('@ringcentral/subscriptions');

const env = process.env;
const out = (value) => process.stdout.write(JSON.stringify(value) + '\n');

async function main() {
  const sdk = new SDK({ server: env.SERVER, clientId: env.CLIENT_ID,
                        clientSecret: env.CLIENT_SECRET });
  await sdk.platform().login({ jwt: env.JWT });
  const subscriptions = new Subscriptions({ sdk });
  const subscription = subscriptions.createSubscription();
  let events = 0;
  subscription.on(subscription.events.notification, (event) => {
    events++;
    out({ event });
  });
  subscription.setEventFilters(JSON.parse(env.FILTERS));
  const registered = await subscription.register();
  // the SDK's WebSocket extension: count the sockets it ever opens, and their closes
  const ws = subscriptions.rc.sdkExtensions.find((e) => e.eventEmitter && 'wsc' in e);
  let sockets = 1;
  const closes = [];
  const watch = (socket) => socket.addEventListener('close', (e) => {
    closes.push(e.code);
    out({ close: e.code });
  });
  watch(ws.ws);
  ws.eventEmitter.on('newWebSocketObject', (socket) => { sockets++; watch(socket); });
  out({ ready: registered.subscriptionInfo.id });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === 'exit') break;
  }
  out({ summary: { events, sockets, closes, wsc: Boolean(ws.wsc) } });
  process.exit(0);
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : String(error));
  process.exit(1);
});
