import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeServer, makeClient, once, record, inbox, quiet } from '../fixtures/fakes.js';

test('an unexpected close reconnects with full-jitter backoff and recovers from the last offset', { timeout: 3000 }, async (t) => {
  const server = new FakeServer();
  const draws = [];
  const random = () => {
    draws.push(1);
    return 0.5;
  };
  const client = makeClient(t, server, { backoff: { baseMs: 40, maxMs: 60, random } });
  const disconnects = record(client, 'disconnected');
  const box = inbox();
  const sub = client.subscribe('chat:a', box.fn);
  await sub.ready;
  server.publish('chat:a', 'first');
  server.publish('chat:a', 'second');
  await box.waitFor(2);

  server.wsMode.push('refuse'); // the first reconnect attempt fails
  server.last.close(1012, ''); // no disconnect push: the close code decides
  await once(client, 'disconnected');
  assert.equal(client.state, 'connecting');
  server.publish('chat:a', 'missed'); // published while the client is away
  await once(client, 'connected');
  // delay = random · min(cap, base · 2^attempt): 0.5·40, then 0.5·min(60, 80)
  assert.deepEqual(disconnects.map((d) => [d.code, d.reconnect, d.delay]), [[1012, true, 20], [1006, true, 30]]);
  assert.equal(draws.length, 2);
  // every attempt asks for a token; tok-2 went to the refused socket, which never opened
  assert.deepEqual(server.framesOf('connect').map((f) => f.token), ['tok-1', 'tok-3']);

  const resub = (await server.take((f, conn) => f.type === 'subscribe' && conn === server.last)).frame;
  assert.deepEqual(resub.recover, { offset: 2, epoch: 'ep1' });
  await box.waitFor(3);
  server.publish('chat:a', 'live');
  await box.waitFor(4);
  assert.deepEqual(box.data(), ['first', 'second', 'missed', 'live']);
});

test('recovered:false is reported on the subscription and on the client', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const box = inbox();
  const sub = client.subscribe('chat:a', box.fn);
  await sub.ready;
  server.publish('chat:a', 'x');
  await box.waitFor(1);
  server.stream('chat:a').epoch = 'ep2'; // the broker restarted and lost its history
  const failed = once(client, 'recoveryFailed');
  const resubscribed = once(sub, 'subscribed');
  server.last.close(1012, 'restart');
  const info = await failed;
  assert.equal(info.channel, 'chat:a');
  assert.equal(info.subscription, sub);
  assert.deepEqual(info.since, { offset: 1, epoch: 'ep1' });
  const ctx = await resubscribed;
  assert.deepEqual(ctx, { channel: 'chat:a', offset: 1, epoch: 'ep2', recovered: false, wasRecovering: true });
});

test('a disconnect push with reconnect:false stops the client', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  await once(client, 'connected');
  const gone = once(client, 'disconnected');
  server.last.send({ type: 'disconnect', code: 1012, reason: 'go away', reconnect: false });
  assert.deepEqual(await gone, { code: 1012, reason: 'go away', reconnect: false });
  assert.equal(client.state, 'closed');
  await assert.rejects(client.publish('chat:a', 1), { code: 'closed' });
  await quiet(40);
  assert.equal(server.wsCreated.length, 1);
});

for (const code of [4003, 1000]) {
  test(`close code ${code} without a push stops the client`, { timeout: 2000 }, async (t) => {
    const server = new FakeServer();
    const client = makeClient(t, server);
    await once(client, 'connected');
    const gone = once(client, 'disconnected');
    server.last.close(code, 'bye');
    assert.deepEqual(await gone, { code, reason: 'bye', reconnect: false });
    assert.equal(client.state, 'closed');
    await quiet(40);
    assert.equal(server.wsCreated.length, 1);
    client.connect(); // the app may start again
    await once(client, 'connected');
  });
}

test('the server delay_ms is honoured as a minimum', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server, { backoff: { baseMs: 10, random: () => 0 } });
  await once(client, 'connected');
  const gone = once(client, 'disconnected');
  const started = Date.now();
  server.last.send({ type: 'disconnect', code: 1012, reason: 'restart', reconnect: true, delay_ms: 60 });
  assert.equal((await gone).delay, 60);
  await once(client, 'connected');
  assert.ok(Date.now() - started >= 55, 'reconnected before delay_ms');
});

test('token refresh sends refresh on the same connection', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  // expires 1.04 s ahead with a 1 s margin: the refresh is due in about 40 ms
  server.expires = (Date.now() + 1040) / 1000;
  const client = makeClient(t, server, { refreshMarginMs: 1000 });
  await once(client, 'connected');
  server.expires = Math.floor(Date.now() / 1000) + 3600;
  const refreshed = once(client, 'refreshed');
  const { frame, conn } = await server.take('refresh');
  assert.equal(frame.token, 'tok-2');
  assert.equal(conn, server.conns[0]);
  assert.equal((await refreshed).expires, server.expires);
  assert.equal(server.wsCreated.length, 1);
  assert.equal(client.state, 'connected');
});

test('a refused refresh emits error and keeps the connection', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  server.expires = (Date.now() + 1020) / 1000;
  server.handlers.refresh = () => ({ type: 'error', code: 'forbidden', message: 'another sub' });
  const client = makeClient(t, server, { refreshMarginMs: 1000 });
  const err = await once(client, 'error');
  assert.equal(err.code, 'forbidden');
  assert.equal(client.state, 'connected');
});

test('an in-flight keyed publish is resent with its key; an unkeyed one is rejected', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  await once(client, 'connected');
  server.handlers.publish = () => null; // the first connection never answers
  const keyed = client.publish('chat:a', 'k', { key: 'order-42' });
  const plain = client.publish('chat:a', 'p');
  await server.take((f) => f.type === 'publish' && f.key === 'order-42');
  await server.take((f) => f.type === 'publish' && f.key === undefined);
  delete server.handlers.publish;
  server.last.close(1012, 'restart');
  await assert.rejects(plain, { code: 'disconnected' });
  const reply = await keyed;
  assert.equal(reply.type, 'published');
  const resent = await server.take((f, conn) => f.type === 'publish' && conn === server.last);
  assert.equal(resent.frame.key, 'order-42');
  assert.equal(server.framesOf('publish').filter((f) => f.data === 'p').length, 1);
});

test('disconnect() stops reconnecting and keeps subscriptions for connect()', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const sub = client.subscribe('chat:a', () => {});
  await sub.ready;
  client.disconnect();
  assert.equal(client.state, 'disconnected');
  assert.equal(server.conns[0].socket.closedByClient.code, 1000);
  await assert.rejects(client.presence('chat:a'), { code: 'disconnected' });
  client.connect();
  await once(client, 'connected');
  const resub = (await server.take((f, conn) => f.type === 'subscribe' && conn === server.last)).frame;
  assert.deepEqual(resub.recover, { offset: 0, epoch: 'ep1' });
});
