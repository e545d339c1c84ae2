import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeServer, makeClient, once, inbox, quiet } from '../fixtures/fakes.js';

test('subscribe delivers messages in order and drops duplicate offsets', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const box = inbox();
  const sub = client.subscribe('chat:lobby', box.fn); // before connecting: sent on `connected`
  const ctx = await sub.ready;
  assert.deepEqual(ctx, { channel: 'chat:lobby', offset: 0, epoch: 'ep1', recovered: false, wasRecovering: false });
  const frame = (await server.take('subscribe')).frame;
  assert.equal(frame.recover, undefined); // nothing to recover on a first subscribe
  server.publish('chat:lobby', { text: 'one' });
  server.last.send({ type: 'message', channel: 'chat:lobby', offset: 1, ts: 1, data: { text: 'one again' } });
  server.publish('chat:lobby', { text: 'two' });
  await box.waitFor(2);
  await quiet(5);
  assert.deepEqual(box.data(), [{ text: 'one' }, { text: 'two' }]);
  assert.equal(box.items[1].pub.offset, 2);
  assert.equal(box.items[1].pub.user, 'alice');
  assert.equal(sub.offset, 2);
  assert.equal(sub.epoch, 'ep1');
});

test('join and leave pushes reach the subscription', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const sub = client.subscribe('chat:lobby', () => {});
  await sub.ready;
  const joined = once(sub, 'join');
  server.last.send({ type: 'join', channel: 'chat:lobby', client: 'c-9', user: 'bob', info: {} });
  assert.equal((await joined).user, 'bob');
  const left = once(sub, 'leave');
  server.last.send({ type: 'leave', channel: 'chat:lobby', client: 'c-9', user: 'bob' });
  assert.equal((await left).client, 'c-9');
});

test('an unsubscribed push from the server ends the subscription', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const box = inbox();
  const sub = client.subscribe('chat:lobby', box.fn);
  await sub.ready;
  const ended = once(sub, 'unsubscribed');
  server.last.send({ type: 'unsubscribed', channel: 'chat:lobby', reason: 'the refreshed token no longer allows this channel' });
  assert.deepEqual(await ended, { channel: 'chat:lobby', reason: 'the refreshed token no longer allows this channel', server: true });
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(client.getSubscription('chat:lobby'), null);
  server.last.send({ type: 'message', channel: 'chat:lobby', offset: 9, ts: 1, data: 'late' });
  await quiet(5);
  assert.equal(box.items.length, 0);
});

test('a refused subscribe ends the subscription and rejects ready', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  server.handlers.subscribe = () => ({ type: 'error', code: 'forbidden', message: 'not for you' });
  const sub = client.subscribe('chat:vip', () => {});
  const errored = once(sub, 'error');
  await assert.rejects(sub.ready, { code: 'forbidden', message: 'not for you' });
  assert.equal((await errored).code, 'forbidden');
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(client.getSubscription('chat:vip'), null);
});

test('a transient subscribe error is retried', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  let calls = 0;
  server.handlers.subscribe = () => (calls++ ? undefined : { type: 'error', code: 'rate_limited', message: 'slow down' });
  const sub = client.subscribe('chat:a', () => {});
  const ctx = await sub.ready;
  assert.equal(ctx.epoch, 'ep1');
  assert.equal(server.framesOf('subscribe').length, 2);
});

test('unsubscribe tells the server and stops delivery', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const box = inbox();
  const sub = client.subscribe('chat:lobby', box.fn);
  await sub.ready;
  await sub.unsubscribe();
  assert.equal((await server.take('unsubscribe')).frame.channel, 'chat:lobby');
  assert.equal(sub.state, 'unsubscribed');
  assert.throws(() => client.subscribe('bad channel!', () => {}), { code: 'bad_request' });
  const again = client.subscribe('chat:lobby', () => {}); // the channel is free again
  await again.ready;
  assert.throws(() => client.subscribe('chat:lobby', () => {}), { code: 'already_subscribed' });
});

test('a recovery delivered in pages (more) is completed with history before newer pushes', { timeout: 2000 }, async (t) => {
  const server = new FakeServer();
  const client = makeClient(t, server);
  const box = inbox();
  const sub = client.subscribe('chat:big', box.fn);
  await sub.ready;
  server.publish('chat:big', 1);
  await box.waitFor(1);
  server.last.close(1012, 'restart');
  for (let i = 2; i <= 5; i++) server.publish('chat:big', i); // missed while away
  const s = server.stream('chat:big');
  server.handlers.subscribe = (conn, frame) => {
    conn.subs.add(frame.channel);
    conn.send({
      id: frame.id, type: 'subscribed', channel: 'chat:big', offset: 5, epoch: 'ep1', recovered: true,
      more: true, next_offset: 3, publications: s.pubs.slice(1, 3),
    });
    // A newer publication races the paging: it must wait until the gap is filled.
    server.publish('chat:big', 6);
    return null;
  };
  await box.waitFor(6);
  assert.deepEqual(box.data(), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(server.framesOf('subscribe')[1].recover, { offset: 1, epoch: 'ep1' });
  const page = server.framesOf('history')[0];
  assert.deepEqual({ since: page.since, limit: page.limit }, { since: { offset: 3, epoch: 'ep1' }, limit: 2 });
  assert.equal(sub.offset, 6);
});
