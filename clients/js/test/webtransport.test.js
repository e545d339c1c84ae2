import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeServer, makeClient, once, record, inbox, quiet } from '../fixtures/fakes.js';

const WT_URL = 'https://127.0.0.1:4433/wt';

function wtClient(t, server, { webtransport, ...options } = {}) {
  return makeClient(t, server, {
    webtransport: { url: WT_URL, serverCertificateHashes: [{ algorithm: 'sha-256', value: 'ab:cd' }], ...webtransport },
    WebTransport: server.WebTransport,
    ...options,
  });
}

test('WebTransport is preferred when available, with newline-delimited JSON', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = wtClient(t, server);
  const info = await once(client, 'connected');
  assert.equal(info.transport, 'webtransport');
  assert.equal(server.wsCreated.length, 0);
  const session = server.wtCreated[0];
  assert.equal(session.url, WT_URL);
  assert.deepEqual([...session.init.serverCertificateHashes[0].value], [0xab, 0xcd]);
  assert.equal(session.init.serverCertificateHashes[0].algorithm, 'sha-256');
  assert.deepEqual(JSON.parse(session.lines[0]), { type: 'connect', id: JSON.parse(session.lines[0]).id, token: 'tok-1' });
  assert.equal((await client.ping()).type, 'pong');
});

test('lines split across chunks, several per chunk, and split UTF-8 are read whole', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = wtClient(t, server);
  const box = inbox();
  const sub = client.subscribe('chat:a', box.fn);
  await sub.ready;
  const conn = server.last;
  const line = (offset, data) => JSON.stringify({ type: 'message', channel: 'chat:a', offset, ts: 1, data }) + '\n';
  const two = line(1, 'one') + line(2, 'two'); // two lines in one chunk
  conn.sendRaw(two.slice(0, 7));
  conn.sendRaw(two.slice(7));
  const bytes = new TextEncoder().encode(line(3, 'héllo 👋'));
  const cut = bytes.indexOf(0xc3) + 1; // inside the two bytes of é
  conn.sendBytes(bytes.slice(0, cut));
  conn.sendBytes(bytes.slice(cut, cut + 20));
  conn.sendBytes(bytes.slice(cut + 20));
  await box.waitFor(3);
  assert.deepEqual(box.data(), ['one', 'two', 'héllo 👋']);
});

test('datagram pushes are delivered like stream pushes', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = wtClient(t, server);
  const box = inbox();
  const sub = client.subscribe('typing:room', box.fn);
  await sub.ready;
  const push = { type: 'message', channel: 'typing:room', user: 'b', data: { typing: true } };
  server.last.datagram(push);
  server.last.datagram(push); // volatile: no offset, so no deduplication
  await box.waitFor(2);
  assert.deepEqual(box.data(), [{ typing: true }, { typing: true }]);
  assert.equal(box.items[0].pub.user, 'b');
});

for (const mode of ['throw', 'reject', 'silent']) {
  test(`falls back to WebSocket when WebTransport ${mode === 'throw' ? 'throws' : mode === 'reject' ? 'rejects ready' : 'never answers'}`, { timeout: 2000 }, async (t) => {
    const server = new FakeServer();
    server.wtMode.push(mode);
    const client = wtClient(t, server, { webtransport: { timeoutMs: 50 }, retryTransportAfter: 1 });
    const fallbacks = record(client, 'fallback');
    const info = await once(client, 'connected');
    assert.equal(info.transport, 'websocket');
    assert.deepEqual(fallbacks.map((f) => [f.from, f.to]), [['webtransport', 'websocket']]);
    // One attempt, one token: the WebSocket gets the token the WebTransport attempt had.
    assert.deepEqual(server.framesOf('connect').map((f) => f.token), mode === 'silent' ? ['tok-1', 'tok-1'] : ['tok-1']);
    assert.equal(server.wtCreated.length, 1);

    // The next session skips WebTransport (remembered), the one after tries it again.
    server.last.close(1012, 'restart');
    assert.equal((await once(client, 'connected')).transport, 'websocket');
    assert.equal(server.wtCreated.length, 1);
    server.last.close(1012, 'restart');
    assert.equal((await once(client, 'connected')).transport, 'webtransport');
    assert.equal(server.wtCreated.length, 2);
  });
}

test('the session close code is treated like a WebSocket close code', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = wtClient(t, server);
  await once(client, 'connected');
  const restart = once(client, 'disconnected');
  server.last.send({ type: 'disconnect', code: 1012, reason: 'restart', reconnect: true });
  server.last.close(1012, 'restart');
  assert.equal((await restart).reconnect, true);
  assert.equal((await once(client, 'connected')).transport, 'webtransport');
  const revoked = once(client, 'disconnected');
  server.last.close(4003, 'revoked'); // no push: the session's close code decides
  assert.deepEqual(await revoked, { code: 4003, reason: 'revoked', reconnect: false });
  assert.equal(client.state, 'closed');
  await quiet(30);
  assert.equal(server.wtCreated.length, 2);
});

test('a stream finished before the session close keeps the close code', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = wtClient(t, server);
  await once(client, 'connected');
  const gone = once(client, 'disconnected');
  const conn = server.last;
  conn.finish(); // the broker finishes the stream, then closes the session with its code
  setTimeout(() => conn.close(4003, 'revoked'), 30);
  assert.deepEqual(await gone, { code: 4003, reason: 'revoked', reconnect: false });
  assert.equal(conn.session.closedByClient, undefined);
});

test('without webtransport options, or with transports [websocket], WebSocket is used', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const plain = makeClient(t, server, { WebTransport: server.WebTransport });
  assert.equal((await once(plain, 'connected')).transport, 'websocket');
  const forced = wtClient(t, server, { transports: ['websocket'] });
  assert.equal((await once(forced, 'connected')).transport, 'websocket');
  assert.equal(server.wtCreated.length, 0);
});
