// Drives one page in Debian's headless Chromium for the Rust browser tests
// (tests/e2e/browser.rs), one command per line on stdin, one JSON answer per line on
// stdout:
//
//   {"cmd":"open","url":"http://127.0.0.1:8080/?user=alice"}
//   {"cmd":"wait","expr":"window.hookwireDemo?.state === 'connected'","timeout_ms":10000}
//   {"cmd":"eval","expr":"window.hookwireDemo.transport"}
//   {"cmd":"send","text":"hello"}            (types into the demo's box and submits)
//   {"cmd":"type","text":"h"}                (types without submitting)
//   {"cmd":"screenshot","path":"/tmp/demo.png"}
//   {"cmd":"quit"}
//
// Answers: {"ok":true,"value":…} or {"ok":false,"error":"…"}. The page's console
// errors go to stderr. QUIC stays allowed (no --disable-quic): the page speaks
// WebTransport with serverCertificateHashes.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'hookwire-chromium-')), {
  executablePath,
  headless: true,
  viewport: { width: 900, height: 560 },
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') console.error(`[page ${m.type()}] ${m.text()}`);
});
page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));

const answer = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);

async function run(c) {
  switch (c.cmd) {
    case 'open':
      await page.goto(c.url, { waitUntil: 'load', timeout: c.timeout_ms ?? 10000 });
      return null;
    case 'wait': {
      const handle = await page.waitForFunction(c.expr, null, { timeout: c.timeout_ms ?? 10000, polling: 50 });
      return handle.jsonValue();
    }
    case 'eval':
      return page.evaluate(c.expr);
    case 'send':
      await page.fill('[data-testid=text]', c.text);
      await page.click('[data-testid=send]');
      return null;
    case 'type':
      await page.type('[data-testid=text]', c.text);
      return null;
    case 'screenshot':
      await page.screenshot({ path: c.path });
      return c.path;
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
}

const lines = createInterface({ input: process.stdin });
answer({ ok: true, value: 'ready' });
for await (const line of lines) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  if (c.cmd === 'quit') break;
  try {
    answer({ ok: true, value: await run(c) });
  } catch (e) {
    answer({ ok: false, error: String(e?.message ?? e) });
  }
}
await context.close();
