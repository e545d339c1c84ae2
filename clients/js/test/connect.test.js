import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Hookwire } from '../hookwire.js';
import { FakeServer, makeClient, once, record } from '../fixtures/fakes.js';

test('connect sends the token and name in the first frame, over hookwire.v1', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server, { name: 'tester' });
  assert.equal(client.state, 'connecting');
  const info = await once(client, 'connected');
  const ws = server.wsCreated[0];
  assert.equal(ws.url, 'ws://broker.test/ws');
  assert.equal(ws.protocols, 'hookwire.v1');
  const first = server.received[0].frame;
  assert.deepEqual(first, { type: 'connect', id: first.id, token: 'tok-1', name: 'tester' });
  assert.ok(Number.isInteger(first.id) && first.id > 0);
  assert.equal(info.transport, 'websocket');
  assert.equal(info.user, 'alice');
  assert.equal(client.state, 'connected');
});

test('the default export is the client class', async () => {
  const mod = await import('../hookwire.js');
  assert.equal(mod.default, Hookwire);
});

test('replies are matched by id, even when they come out of order', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  await once(client, 'connected');
  server.handlers.presence = () => null; // hold the presence reply
  const presence = client.presence('chat:lobby');
  const history = client.history('chat:lobby', { limit: 5, since: { offset: 0, epoch: 'ep1' } });
  const held = await server.take('presence');
  const histFrame = (await server.take('history')).frame;
  assert.deepEqual(histFrame, { type: 'history', id: histFrame.id, channel: 'chat:lobby', limit: 5, since: { offset: 0, epoch: 'ep1' } });
  assert.notEqual(held.frame.id, histFrame.id);
  assert.equal((await history).type, 'history'); // answered first
  held.conn.send({ id: held.frame.id, type: 'presence', channel: 'chat:lobby', clients: [{ client: 'c-9', user: 'bob', info: {} }] });
  const reply = await presence;
  assert.equal(reply.clients[0].user, 'bob');
});

test('a server error frame rejects with its code and message', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  await once(client, 'connected');
  server.handlers.publish = () => ({ type: 'error', code: 'forbidden', message: 'your token does not grant chat:vip' });
  await assert.rejects(client.publish('chat:vip', { text: 'hi' }), { code: 'forbidden', message: 'your token does not grant chat:vip' });
  assert.equal(client.state, 'connected');
});

test('a request without a reply times out with code timeout', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server, { requestTimeoutMs: 40 });
  await once(client, 'connected');
  server.handlers.ping = () => null;
  await assert.rejects(client.ping(), { code: 'timeout' });
  delete server.handlers.ping;
  assert.equal((await client.ping()).type, 'pong');
});

test('a refused connect (error, disconnect 4001) reconnects with a fresh token', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  let refused = 0;
  server.handlers.connect = (conn, frame) => {
    if (refused++) return undefined; // the second connect is accepted
    conn.send({ id: frame.id, type: 'error', code: 'token_expired', message: 'the token expired' });
    conn.send({ type: 'disconnect', code: 4001, reason: 'get a new token', reconnect: true });
    conn.close(4001, 'get a new token');
    return null;
  };
  const client = makeClient(t, server);
  const errors = record(client, 'error');
  const disconnects = record(client, 'disconnected');
  await once(client, 'connected');
  assert.deepEqual(server.framesOf('connect').map((f) => f.token), ['tok-1', 'tok-2']);
  assert.equal(errors[0].code, 'token_expired');
  assert.equal(disconnects[0].code, 4001);
  assert.equal(disconnects[0].reconnect, true);
});

test('a frame over maxFrameBytes is refused locally and the connection stays', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server, { maxFrameBytes: 200 });
  await once(client, 'connected');
  await assert.rejects(client.publish('chat:a', 'é'.repeat(200)), { code: 'too_large' });
  assert.equal(server.framesOf('publish').length, 0);
  assert.equal((await client.publish('chat:a', 'small')).offset, 1);
});

test('constructing without any transport throws', { skip: !!globalThis.WebSocket && 'this runtime has a global WebSocket' }, () => {
  assert.throws(() => new Hookwire('ws://x/ws', { WebSocket: null, autoConnect: false }), { code: 'transport' });
});
