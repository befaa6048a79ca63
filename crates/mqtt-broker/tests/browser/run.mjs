// Drives Debian's Chromium, headless, through playwright-core: a page with MQTT.js
// (the npm package `mqtt`, its browser bundle) connects to the broker at each URL given,
// subscribes, publishes and must receive its own message. Run by tests/it/browser.rs:
//
//     node run.mjs CHROMIUM URL...
//
// Prints one line per URL; exits 1 on the first failure. The broker's TLS certificate
// comes from the test's own CA, so Chromium is started with --ignore-certificate-errors.
import { chromium } from 'playwright-core';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const [executablePath, ...urls] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const bundle = path.join(here, 'node_modules', 'mqtt', 'dist', 'mqtt.min.js');

const browser = await chromium.launch({
  executablePath,
  // Root (CI) cannot use Chromium's sandbox.
  args: ['--no-sandbox', '--ignore-certificate-errors'],
  timeout: 30000,
});
let failed = false;
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.error(`page: ${m.text()}`));
  await page.setContent('<!doctype html><title>MQTT over WebSocket</title><p id="out"></p>');
  await page.addScriptTag({ path: bundle });
  for (const [i, url] of urls.entries()) {
    const version = i % 2 === 0 ? 5 : 4;
    const result = await page.evaluate(
      async ({ url, version, i }) => {
        const topic = `browser/${i}`;
        const text = `hello from the browser over ${url}`;
        const client = mqtt.connect(url, {
          clientId: `browser-${i}`,
          protocolVersion: version,
          reconnectPeriod: 0,
          connectTimeout: 10000,
        });
        try {
          await new Promise((resolve, reject) => {
            client.once('connect', resolve);
            client.once('error', reject);
            client.once('close', () => reject(new Error('closed before CONNACK')));
          });
          const received = new Promise((resolve) =>
            client.on('message', (t, payload) => resolve(`${t} ${payload.toString()}`)),
          );
          await client.subscribeAsync(topic, { qos: 1 });
          await client.publishAsync(topic, text, { qos: 1 });
          const got = await Promise.race([
            received,
            new Promise((_, reject) => setTimeout(() => reject(new Error('no message')), 10000)),
          ]);
          document.getElementById('out').textContent += got + '\n';
          if (got !== `${topic} ${text}`) throw new Error(`received ${got}`);
          return `ok ${url} (MQTT ${version === 5 ? '5.0' : '3.1.1'}): ${got}`;
        } finally {
          await client.endAsync();
        }
      },
      { url, version, i },
    );
    console.log(result);
  }
} catch (e) {
  console.error(`FAIL: ${e.message ?? e}`);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
