import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeServer, makeClient, once, record } from '../fixtures/fakes.js';

test('offline publishes are queued up to the bound, dropping the oldest', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server, { autoConnect: false, maxQueuedPublishes: 2 });
  const dropped = record(client, 'publishDropped');
  assert.equal(client.state, 'disconnected');
  const p1 = client.publish('chat:a', 1);
  const p2 = client.publish('chat:a', 2, { key: 'two' });
  const p3 = client.publish('chat:a', 3);
  await assert.rejects(p1, { code: 'dropped', reason: 'queue_full' });
  assert.deepEqual(dropped, [{ channel: 'chat:a', data: 1, key: undefined, reason: 'queue_full' }]);
  assert.equal(server.wsCreated.length, 0);

  client.connect();
  assert.deepEqual([(await p2).offset, (await p3).offset], [1, 2]);
  const sent = server.received.map((e) => e.frame.type + (e.frame.type === 'publish' ? `:${e.frame.data}` : ''));
  assert.deepEqual(sent, ['connect', 'publish:2', 'publish:3']);
  assert.equal(server.framesOf('publish')[0].key, 'two');
});

test('queued publishes are dropped when the server says stop', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  server.handlers.connect = (conn, frame) => {
    conn.send({ id: frame.id, type: 'error', code: 'forbidden', message: 'revoked' });
    conn.send({ type: 'disconnect', code: 4003, reason: 'token revoked', reconnect: false });
    conn.close(4003, 'token revoked');
    return null;
  };
  const client = makeClient(t, server, { autoConnect: false });
  const dropped = record(client, 'publishDropped');
  client.on('error', () => {});
  const queued = client.publish('chat:a', 'x');
  client.connect();
  await assert.rejects(queued, { code: 'dropped', reason: 'closed' });
  assert.equal(client.state, 'closed');
  assert.equal(dropped[0].reason, 'closed');
});

test('reads wait while connecting and are sent after connect', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  assert.equal(client.state, 'connecting');
  const reply = await client.presence('chat:a');
  assert.equal(reply.type, 'presence');
  const order = server.received.map((e) => e.frame.type);
  assert.deepEqual(order, ['connect', 'presence']);
});

test('a publish from the connected handler does not overtake the queue', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const queued = client.publish('chat:a', 'queued');
  let fromHandler;
  client.on('connected', () => {
    fromHandler = client.publish('chat:a', 'handler');
  });
  await once(client, 'connected');
  await Promise.all([queued, fromHandler]);
  assert.deepEqual(server.framesOf('publish').map((f) => f.data), ['queued', 'handler']);
});

test('a read waiting for a connection times out from the call', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  server.handlers.connect = () => null; // the handshake never completes
  const client = makeClient(t, server, { requestTimeoutMs: 40 });
  const queued = client.publish('chat:a', 'kept');
  await assert.rejects(client.history('chat:a'), { code: 'timeout' });
  assert.equal(client.state, 'connecting');
  client.disconnect();
  delete server.handlers.connect;
  client.connect(); // the publish stayed queued through the timeout and the disconnect
  assert.equal((await queued).offset, 1);
});
