// A legacy app on the official RingCentral JavaScript SDK (npm @ringcentral/sdk), pointed at
// the proxy and otherwise unchanged. Run by tests/test_sdk_e2e.py; prints one JSON summary line
// and exits non-zero on the first failure.
// Environment: SERVER (the proxy URL), CLIENT_ID, CLIENT_SECRET, JWT, USERNAME, EXTENSION,
// PASSWORD, DURATION (seconds to keep going; at least one round).
'use strict';
const crypto = require('crypto');
const { SDK } = require('@ringcentral/sdk');

const EXT = '/restapi/v1.0/account/~/extension/~';
const env = process.env;

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

async function main() {
  // Node's own fetch (the SDK's documented options), so FormData bodies go out as multipart
  const options = { server: env.SERVER, clientId: env.CLIENT_ID, clientSecret: env.CLIENT_SECRET,
                    fetch: globalThis.fetch, Request: globalThis.Request,
                    Response: globalThis.Response, Headers: globalThis.Headers };
  // two apps in one process: each SDK keeps its tokens under its own cache prefix
  const jwtPlatform = new SDK({ ...options, cachePrefix: 'jwt-app-' }).platform();
  await jwtPlatform.login({ jwt: env.JWT });
  const pwPlatform = new SDK({ ...options, cachePrefix: 'password-app-' }).platform();
  await pwPlatform.login({ username: env.USERNAME, extension: env.EXTENSION, password: env.PASSWORD });
  const done = { extension: 0, sms: 0, fax: 0, pages: 0, recordings: 0, recording_sha256: {},
                 recording_size: {} };
  const end = Date.now() + 1000 * Number(env.DURATION || '10');
  for (let round = 0; round < 1000 && (done.sms === 0 || Date.now() < end); round++) {
    for (const [platform, owner] of [[jwtPlatform, 100001], [pwPlatform, 100002]]) {
      const ext = await (await platform.get(EXT)).json();
      check(ext.id === owner, `extension id ${ext.id}`);
      done.extension++;
    }
    const sms = await (await jwtPlatform.post(`${EXT}/sms`, {
      from: { phoneNumber: '+15550100001' }, to: [{ phoneNumber: '+15550109999' }],
      text: 'through the proxy' })).json();
    check(sms.type === 'SMS', 'sms');
    done.sms++;
    const form = new FormData();
    form.append('json', new Blob([JSON.stringify({ to: [{ phoneNumber: '+15550109999' }] })],
      { type: 'application/json' }), 'request.json');
    form.append('attachment', new Blob(['a fax through the proxy\n'.repeat(200)],
      { type: 'text/plain' }), 'cover.txt');
    form.append('attachment', new Blob([Buffer.alloc(100000, 7)], { type: 'application/pdf' }),
      'page.pdf');
    const fax = await (await jwtPlatform.post(`${EXT}/fax`, form)).json();
    check(fax.type === 'Fax' && fax.parts === 3, `fax ${JSON.stringify(fax).slice(0, 200)}`);
    done.fax++;
    let url = `${EXT}/call-log?perPage=10&view=Detailed`;
    let contentUri = null;
    for (let i = 0; i < 50 && url; i++) {
      const page = await (await jwtPlatform.get(url)).json();
      done.pages++;
      for (const record of page.records) {
        if (record.recording && !contentUri) contentUri = record.recording.contentUri;
      }
      url = page.navigation.nextPage ? page.navigation.nextPage.uri : null;
      check(!url || url.startsWith(env.SERVER), `next page ${url}`);
    }
    check(contentUri && contentUri.startsWith(env.SERVER), `contentUri ${contentUri}`);
    const body = Buffer.from(await (await jwtPlatform.get(contentUri)).arrayBuffer());
    const recId = contentUri.replace(/\/+$/, '').split('/').slice(-2)[0];
    done.recordings++;
    done.recording_sha256[recId] = crypto.createHash('sha256').update(body).digest('hex');
    done.recording_size[recId] = body.length;
  }
  console.log(JSON.stringify(done));
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
