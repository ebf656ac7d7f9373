// Sections 3, 4 (new_comment, edit_comment, delete_comment, list_comments), 5 (comment shape,
// mentions) and 10 (Text, Comments, Who receives what): comments in `…:comments` rooms.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  ISO_UTC,
  assertErrorAck,
  connectAs,
  emitAck,
  flush,
  record,
  uniq,
  waitFor,
  join,
  assertRecentIso,
  connectRecording,
  serverPool,
} from './helpers.mjs';
import { startCluster } from './services.mjs';

const { start } = serverPool(after);

/** Checks a freshly created comment (section 5): exact keys, no editedAt, parentId only when given. */
function assertNewComment(c, { room, content, user, mentions = [], parentId }) {
  assert.equal(typeof c, 'object');
  const keys = ['content', 'id', 'mentions', 'room', 'timestamp', 'user'];
  if (parentId !== undefined) keys.push('parentId');
  assert.deepEqual(Object.keys(c).sort(), keys.sort(), `comment keys: ${JSON.stringify(c)}`);
  assert.equal(typeof c.id, 'string');
  assert.ok(c.id.length > 0, 'comment id is empty');
  assert.equal(c.room, room);
  assert.equal(c.content, content);
  assert.deepEqual(c.user, user);
  assertRecentIso(c.timestamp);
  assert.ok(Array.isArray(c.mentions), 'mentions is not an array');
  assert.deepEqual([...c.mentions].sort(), [...mentions].sort());
  if (parentId !== undefined) assert.equal(c.parentId, parentId);
}

async function newComment(socket, payload) {
  const ack = await emitAck(socket, 'new_comment', payload);
  assert.equal(ack.success, true, `new_comment: ${JSON.stringify(ack)}`);
  assert.deepEqual(Object.keys(ack).sort(), ['comment', 'success'], `ack shape: ${JSON.stringify(ack)}`);
  return ack.comment;
}

describe('new_comment', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('without joining first: ack { success, comment } in the section-5 shape, content trimmed', async () => {
    const p = uniq('p');
    const uid = uniq('author');
    const s = await connectAs(server, { userId: uid, name: 'Ada Author', projects: [p] });
    const room = `project:${p}:comments`;
    const c = await newComment(s, { room, content: '  \n\t hello world \n ' });
    assertNewComment(c, { room, content: 'hello world', user: { id: uid, name: 'Ada Author' } });
    s.close();
  });

  test('user.name falls back to the id; task:{t}:comments rooms work; numeric claims match', async () => {
    const t = Math.floor(Math.random() * 1e9);
    const uid = uniq('noname');
    const s = await connectAs(server, { userId: uid, tasks: [t] });
    const room = `task:${t}:comments`;
    const c = await newComment(s, { room, content: 'on a task' });
    assertNewComment(c, { room, content: 'on a task', user: { id: uid, name: uid } });
    s.close();
  });

  test("the room's other sockets (the author's other socket included) get new_comment equal to the ack; the sender does not", async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const authorId = uniq('author');
    const sender = await connectAs(server, { userId: authorId, name: 'Author', projects: [p] });
    const sibling = await connectAs(server, { userId: authorId, name: 'Author', projects: [p] });
    const member = await connectAs(server, { userId: uniq('member'), projects: [p] });
    const outsider = await connectAs(server, { userId: uniq('outsider'), projects: [p] }); // may join, did not
    for (const s of [sender, sibling, member]) await join(s, room);
    const recs = [sender, sibling, member, outsider].map((s) => record(s, 'new_comment'));
    const c = await newComment(sender, { room, content: 'broadcast me', mentions: [] });
    await flush(server, sender, sibling, member, outsider);
    assert.deepEqual(recs[0].events, [], 'the sending socket got its own new_comment');
    assert.deepEqual(recs[1].events, [c]);
    assert.deepEqual(recs[2].events, [c]);
    assert.deepEqual(recs[3].events, [], 'a socket outside the room got new_comment');
    for (const s of [sender, sibling, member, outsider]) s.close();
  });

  test('INVALID_ROOM for rooms that are not …:comments rooms; INVALID_PAYLOAD for a non-string room', async () => {
    const p = uniq('p');
    const t = uniq('t');
    const m = uniq('m');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p], tasks: [t], teams: [m] });
    for (const room of [
      `project:${p}`,
      `project:${p}:activity`,
      `task:${t}`,
      `task:${t}:time`,
      `team:${m}`,
      `team:${m}:chat`,
      `team:${m}:comments`,
      `notifications:${uid}`,
      'foo',
      `project:${p}:comments:x`,
      `Project:${p}:comments`,
      '',
      s.id,
    ]) {
      assertErrorAck(await emitAck(s, 'new_comment', { room, content: 'x' }), 'INVALID_ROOM');
    }
    for (const room of [undefined, null, 42, { room: `project:${p}:comments` }]) {
      assertErrorAck(await emitAck(s, 'new_comment', { room, content: 'x' }), 'INVALID_PAYLOAD');
    }
    for (const payload of ['x', 42, null, [`project:${p}:comments`, 'x']]) {
      assertErrorAck(await emitAck(s, 'new_comment', payload), 'INVALID_PAYLOAD');
    }
    s.close();
  });

  test('FORBIDDEN without access to the room (admin has access everywhere)', async () => {
    const p = uniq('p');
    const other = uniq('other');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p], tasks: ['1'] });
    const member = await connectAs(server, { userId: uniq('m'), projects: [other] });
    await join(member, `project:${other}:comments`);
    const got = record(member, 'new_comment');
    for (const room of [`project:${other}:comments`, `task:2:comments`, `project:${p}0:comments`]) {
      assertErrorAck(await emitAck(s, 'new_comment', { room, content: 'nope' }), 'FORBIDDEN');
    }
    const admin = await connectAs(server, { userId: uniq('root'), permissions: ['admin'] });
    const c = await newComment(admin, { room: `project:${other}:comments`, content: 'admin says' });
    await flush(server, member);
    assert.deepEqual(got.events, [c], 'only the admin comment reached the room');
    for (const x of [s, member, admin]) x.close();
  });

  test('INVALID_PAYLOAD for blank or non-string content', async () => {
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const room = `project:${p}:comments`;
    for (const content of ['', '   ', ' \n\t\r ', undefined, null, 42, true, ['hello'], { text: 'hello' }]) {
      assertErrorAck(await emitAck(s, 'new_comment', { room, content }), 'INVALID_PAYLOAD');
    }
    assert.deepEqual(await emitAck(s, 'list_comments', { room }), { success: true, comments: [], hasMore: false });
    s.close();
  });

  test('length is counted in code points after trimming: 10,000 accepted, 10,001 TOO_LARGE', async () => {
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const room = `project:${p}:comments`;
    const clef = '\u{1D11E}'; // 𝄞: one code point, two UTF-16 units
    const max = clef.repeat(10_000);
    assert.equal(max.length, 20_000);
    const c = await newComment(s, { room, content: `   ${max}   ` });
    assertNewComment(c, { room, content: max, user: { id: uid, name: uid } });
    const ascii = await newComment(s, { room, content: `\n${'a'.repeat(10_000)}\n` });
    assert.equal(ascii.content, 'a'.repeat(10_000));
    assertErrorAck(await emitAck(s, 'new_comment', { room, content: clef.repeat(10_001) }), 'TOO_LARGE');
    assertErrorAck(await emitAck(s, 'new_comment', { room, content: `${'b'.repeat(10_001)}` }), 'TOO_LARGE');
    assertErrorAck(await emitAck(s, 'new_comment', { room, content: ` ${'b'.repeat(10_000)}x ` }), 'TOO_LARGE');
    const list = await emitAck(s, 'list_comments', { room });
    assert.deepEqual(list.comments.map((x) => x.id), [ascii.id, c.id]);
    s.close();
  });

  test('markup that could run script is removed before storing', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const member = await connectAs(server, { userId: uniq('m'), projects: [p] });
    await join(member, room);
    const got = waitFor(member, 'new_comment');
    const c = await newComment(s, { room, content: '<script>alert(1)</script>hello' });
    assert.equal(c.content, 'hello');
    assert.deepEqual(await got, c);
    const img = await newComment(s, { room, content: 'hi <img src=x onerror="alert(2)"> there' });
    assert.ok(!/onerror/i.test(img.content), `event handler kept: ${img.content}`);
    assert.ok(!/<img/i.test(img.content), `img tag kept: ${img.content}`);
    assert.ok(img.content.startsWith('hi') && img.content.endsWith('there'), img.content);
    const link = await newComment(s, { room, content: 'x <a href="javascript:alert(3)">y</a>' });
    assert.ok(!/javascript:/i.test(link.content), `javascript: URL kept: ${link.content}`);
    const list = await emitAck(s, 'list_comments', { room });
    assert.equal(list.comments.find((x) => x.id === c.id).content, 'hello');
    s.close();
    member.close();
  });

  test('parentId: unknown NOT_FOUND; a known one is carried by the reply (ack and event)', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const member = await connectAs(server, { userId: uniq('m'), projects: [p] });
    await join(member, room);
    const events = record(member, 'new_comment');
    assertErrorAck(await emitAck(s, 'new_comment', { room, content: 'orphan', parentId: 'no-such-comment' }), 'NOT_FOUND');
    const parent = await newComment(s, { room, content: 'parent' });
    const reply = await newComment(s, { room, content: 'reply', parentId: parent.id });
    assertNewComment(reply, { room, content: 'reply', user: { id: uid, name: uid }, parentId: parent.id });
    assert.notEqual(reply.id, parent.id);
    await flush(server, member);
    assert.deepEqual(events.events, [parent, reply], 'the NOT_FOUND comment must not be broadcast');
    assert.ok(!('parentId' in parent));
    s.close();
    member.close();
  });
});

describe('edit_comment', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('by the author: ack { comment } and comment_updated to the room (sender included), equal; editedAt ISO', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const author = await connectAs(server, { userId: uid, name: 'Author A', projects: [p] });
    const member = await connectAs(server, { userId: uniq('m'), projects: [p] });
    await join(author, room);
    await join(member, room);
    const c = await newComment(author, { room, content: 'first version', mentions: [uniq('x')] });
    const atAuthor = waitFor(author, 'comment_updated');
    const atMember = waitFor(member, 'comment_updated');
    const ack = await emitAck(author, 'edit_comment', { id: c.id, content: '  second version  ' });
    assert.equal(ack.success, true, JSON.stringify(ack));
    assert.deepEqual(Object.keys(ack).sort(), ['comment', 'success']);
    const u = ack.comment;
    assert.deepEqual(Object.keys(u).sort(), [...Object.keys(c), 'editedAt'].sort());
    assert.equal(u.id, c.id);
    assert.equal(u.room, c.room);
    assert.equal(u.content, 'second version');
    assert.deepEqual(u.user, c.user);
    assert.equal(u.timestamp, c.timestamp);
    assert.deepEqual(u.mentions, c.mentions);
    assertRecentIso(u.editedAt, 'editedAt');
    assert.ok(Date.parse(u.editedAt) >= Date.parse(c.timestamp));
    assert.deepEqual(await atAuthor, u);
    assert.deepEqual(await atMember, u);
    const list = await emitAck(member, 'list_comments', { room });
    assert.deepEqual(list.comments, [u]);
    author.close();
    member.close();
  });

  test('another user FORBIDDEN, even admin; unknown id NOT_FOUND; content rules apply', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const author = await connectAs(server, { userId: uid, projects: [p] });
    const other = await connectAs(server, { userId: uniq('other'), projects: [p] });
    const admin = await connectAs(server, { userId: uniq('root'), permissions: ['admin'] });
    await join(other, room);
    const updates = record(other, 'comment_updated');
    const c = await newComment(author, { room, content: 'mine' });
    assertErrorAck(await emitAck(other, 'edit_comment', { id: c.id, content: 'hijack' }), 'FORBIDDEN');
    assertErrorAck(await emitAck(admin, 'edit_comment', { id: c.id, content: 'admin hijack' }), 'FORBIDDEN');
    assertErrorAck(await emitAck(author, 'edit_comment', { id: 'no-such-comment', content: 'x' }), 'NOT_FOUND');
    for (const content of ['', '   ', 7, null, undefined]) {
      assertErrorAck(await emitAck(author, 'edit_comment', { id: c.id, content }), 'INVALID_PAYLOAD');
    }
    assertErrorAck(await emitAck(author, 'edit_comment', { id: c.id, content: 'z'.repeat(10_001) }), 'TOO_LARGE');
    for (const payload of [c.id, null, { content: 'x' }]) {
      assertErrorAck(await emitAck(author, 'edit_comment', payload), 'INVALID_PAYLOAD');
    }
    await flush(server, other);
    assert.deepEqual(updates.events, []);
    assert.deepEqual((await emitAck(author, 'list_comments', { room })).comments, [c]);
    for (const s of [author, other, admin]) s.close();
  });
});

describe('delete_comment', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('by the author: ack { id }; the room (sender included) gets comment_deleted {id, room, deletedBy, timestamp}', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const author = await connectAs(server, { userId: uid, projects: [p] });
    const member = await connectAs(server, { userId: uniq('m'), projects: [p] });
    await join(author, room);
    await join(member, room);
    const keep = await newComment(author, { room, content: 'keep' });
    const c = await newComment(author, { room, content: 'delete me' });
    const atAuthor = waitFor(author, 'comment_deleted');
    const atMember = waitFor(member, 'comment_deleted');
    assert.deepEqual(await emitAck(author, 'delete_comment', { id: c.id }), { success: true, id: c.id });
    for (const ev of [await atAuthor, await atMember]) {
      assert.deepEqual(Object.keys(ev).sort(), ['deletedBy', 'id', 'room', 'timestamp']);
      assert.equal(ev.id, c.id);
      assert.equal(ev.room, room);
      assert.equal(ev.deletedBy, uid);
      assertRecentIso(ev.timestamp);
    }
    assert.deepEqual((await emitAck(member, 'list_comments', { room })).comments, [keep]);
    assertErrorAck(await emitAck(author, 'delete_comment', { id: c.id }), 'NOT_FOUND');
    assertErrorAck(await emitAck(author, 'edit_comment', { id: c.id, content: 'again' }), 'NOT_FOUND');
    author.close();
    member.close();
  });

  test('by an admin: deletedBy is the admin', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const author = await connectAs(server, { userId: uniq('author'), projects: [p] });
    const adminId = uniq('root');
    const admin = await connectAs(server, { userId: adminId, permissions: ['admin'] });
    await join(author, room);
    const c = await newComment(author, { room, content: 'moderate me' });
    const deleted = waitFor(author, 'comment_deleted');
    assert.deepEqual(await emitAck(admin, 'delete_comment', { id: c.id }), { success: true, id: c.id });
    const ev = await deleted;
    assert.equal(ev.id, c.id);
    assert.equal(ev.room, room);
    assert.equal(ev.deletedBy, adminId);
    assertRecentIso(ev.timestamp);
    assert.deepEqual((await emitAck(author, 'list_comments', { room })).comments, []);
    author.close();
    admin.close();
  });

  test('by another non-admin FORBIDDEN; unknown id NOT_FOUND; bad payload INVALID_PAYLOAD', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const author = await connectAs(server, { userId: uniq('author'), projects: [p] });
    const other = await connectAs(server, { userId: uniq('other'), projects: [p], permissions: ['room_broadcast', 'metrics'] });
    await join(author, room);
    const deletions = record(author, 'comment_deleted');
    const c = await newComment(author, { room, content: 'not yours' });
    assertErrorAck(await emitAck(other, 'delete_comment', { id: c.id }), 'FORBIDDEN');
    assertErrorAck(await emitAck(other, 'delete_comment', { id: 'no-such-comment' }), 'NOT_FOUND');
    for (const payload of [c.id, null, {}]) {
      assertErrorAck(await emitAck(author, 'delete_comment', payload), 'INVALID_PAYLOAD');
    }
    await flush(server, author);
    assert.deepEqual(deletions.events, []);
    assert.deepEqual((await emitAck(author, 'list_comments', { room })).comments, [c]);
    author.close();
    other.close();
  });
});

describe('list_comments', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('newest first; before pages with hasMore; unknown before NOT_FOUND', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    assert.deepEqual(await emitAck(s, 'list_comments', { room }), { success: true, comments: [], hasMore: false });
    const made = [];
    for (let i = 1; i <= 5; i++) made.push(await newComment(s, { room, content: `comment ${i}` }));
    const [c1, c2, c3, c4, c5] = made;
    // another room's comments never show up
    const t = uniq('p');
    const s2 = await connectAs(server, { userId: uniq('u'), projects: [t] });
    await newComment(s2, { room: `project:${t}:comments`, content: 'elsewhere' });

    assert.deepEqual(await emitAck(s, 'list_comments', { room }), { success: true, comments: [c5, c4, c3, c2, c1], hasMore: false });
    assert.deepEqual(await emitAck(s, 'list_comments', { room, limit: 2 }), { success: true, comments: [c5, c4], hasMore: true });
    assert.deepEqual(await emitAck(s, 'list_comments', { room, limit: 2, before: c4.id }), { success: true, comments: [c3, c2], hasMore: true });
    assert.deepEqual(await emitAck(s, 'list_comments', { room, limit: 2, before: c2.id }), { success: true, comments: [c1], hasMore: false });
    assert.deepEqual(await emitAck(s, 'list_comments', { room, before: c3.id }), { success: true, comments: [c2, c1], hasMore: false });
    assert.deepEqual(await emitAck(s, 'list_comments', { room, limit: 5 }), { success: true, comments: [c5, c4, c3, c2, c1], hasMore: false });
    assert.deepEqual(await emitAck(s, 'list_comments', { room, limit: 4 }), { success: true, comments: [c5, c4, c3, c2], hasMore: true });
    assert.deepEqual(await emitAck(s, 'list_comments', { room, before: c1.id }), { success: true, comments: [], hasMore: false });
    assertErrorAck(await emitAck(s, 'list_comments', { room, before: 'no-such-comment' }), 'NOT_FOUND');
    s.close();
    s2.close();
  });

  test('limit 0, non-integers and strings INVALID_PAYLOAD; bad rooms INVALID_ROOM; no access FORBIDDEN', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    await newComment(s, { room, content: 'one' });
    for (const limit of [0, 1.5, '5', -1, true, [5], {}]) {
      assertErrorAck(await emitAck(s, 'list_comments', { room, limit }), 'INVALID_PAYLOAD');
    }
    for (const r of [`project:${p}`, `project:${p}:activity`, 'nope']) {
      assertErrorAck(await emitAck(s, 'list_comments', { room: r }), 'INVALID_ROOM');
    }
    assertErrorAck(await emitAck(s, 'list_comments', { room: `project:${uniq('q')}:comments` }), 'FORBIDDEN');
    for (const payload of [room, null, {}]) {
      assertErrorAck(await emitAck(s, 'list_comments', payload), 'INVALID_PAYLOAD');
    }
    const one = await emitAck(s, 'list_comments', { room, limit: 1 });
    assert.equal(one.success, true);
    assert.equal(one.comments.length, 1);
    s.close();
  });
});

describe('list_comments with 105 comments (RATE_LIMIT_PER_MINUTE=0)', () => {
  let server;
  before(async () => {
    server = await start({ RATE_LIMIT_PER_MINUTE: 0 });
  });

  test('default limit 50; a limit above 100 is capped at 100', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const made = [];
    for (let i = 0; i < 105; i++) made.push(await newComment(s, { room, content: `n${i}` }));
    const newest = [...made].reverse().map((c) => c.id);

    const def = await emitAck(s, 'list_comments', { room });
    assert.equal(def.success, true);
    assert.deepEqual(def.comments.map((c) => c.id), newest.slice(0, 50));
    assert.equal(def.hasMore, true);

    for (const limit of [101, 1000]) {
      const big = await emitAck(s, 'list_comments', { room, limit });
      assert.deepEqual(big.comments.map((c) => c.id), newest.slice(0, 100), `limit ${limit}`);
      assert.equal(big.hasMore, true);
    }
    const exact = await emitAck(s, 'list_comments', { room, limit: 100 });
    assert.deepEqual(exact.comments.map((c) => c.id), newest.slice(0, 100));
    assert.equal(exact.hasMore, true);

    const rest = await emitAck(s, 'list_comments', { room, limit: 100, before: newest[99] });
    assert.deepEqual(rest.comments.map((c) => c.id), newest.slice(100));
    assert.equal(rest.hasMore, false);
    const tail = await emitAck(s, 'list_comments', { room, before: newest[49] });
    assert.deepEqual(tail.comments.map((c) => c.id), newest.slice(50, 100));
    assert.equal(tail.hasMore, true);
    s.close();
  });
});

describe('mentions', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('deduplicated, author removed; the author gets no mention', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const [m1, m2] = [uniq('m1'), uniq('m2')];
    const author = await connectAs(server, { userId: uid, projects: [p] });
    const authorOther = await connectAs(server, { userId: uid, projects: [p] });
    const r1 = await connectAs(server, { userId: m1 });
    const r2 = await connectAs(server, { userId: m2 });
    const recs = [authorOther, author, r1, r2].map((s) => record(s, 'mention'));
    const c = await newComment(author, { room, content: 'hi all', mentions: [m1, m1, uid, m2, m1, uid] });
    assert.deepEqual([...c.mentions].sort(), [m1, m2].sort());
    assert.equal(c.mentions.length, 2);
    await flush(server, authorOther, author, r1, r2);
    assert.deepEqual(recs[0].events, []);
    assert.deepEqual(recs[1].events, []);
    assert.equal(recs[2].events.length, 1, 'a mention deduplicated must arrive once');
    assert.equal(recs[3].events.length, 1);
    for (const s of [author, authorOther, r1, r2]) s.close();
  });

  test('more than 50 INVALID_PAYLOAD (nothing stored, nothing sent); 50 accepted; not an array INVALID_PAYLOAD', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const author = await connectAs(server, { userId: uniq('author'), projects: [p] });
    const firstId = uniq('first');
    const first = await connectAs(server, { userId: firstId });
    const got = record(first, 'mention');
    const many = [firstId, ...Array.from({ length: 50 }, (_, i) => `${uniq('x')}-${i}`)];
    assert.equal(many.length, 51);
    assertErrorAck(await emitAck(author, 'new_comment', { room, content: 'too many', mentions: many }), 'INVALID_PAYLOAD');
    for (const mentions of [firstId, 5, { id: firstId }]) {
      assertErrorAck(await emitAck(author, 'new_comment', { room, content: 'bad mentions', mentions }), 'INVALID_PAYLOAD');
    }
    await flush(server, first);
    assert.deepEqual(got.events, []);
    assert.deepEqual((await emitAck(author, 'list_comments', { room })).comments, []);
    const ok = await newComment(author, { room, content: 'fifty', mentions: many.slice(0, 50) });
    assert.equal(ok.mentions.length, 50);
    await flush(server, first);
    assert.equal(got.events.length, 1);
    author.close();
    first.close();
  });

  test('each mentioned online user gets mention {commentId, room, by, excerpt, timestamp} in notifications:{user}', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const mid = uniq('mentioned');
    const author = await connectAs(server, { userId: uid, name: 'Author Name', projects: [p] });
    const tab1 = await connectAs(server, { userId: mid });
    const tab2 = await connectAs(server, { userId: mid });
    const bystander = await connectAs(server, { userId: uniq('by'), projects: [p] });
    await join(bystander, room);
    const recs = [tab1, tab2, bystander].map((s) => record(s, 'mention'));
    const content = `\u{1D11E}${'a'.repeat(150)}`; // excerpt: the first 100 code points
    const c = await newComment(author, { room, content, mentions: [mid] });
    await flush(server, tab1, tab2, bystander);
    for (const rec of recs.slice(0, 2)) {
      assert.equal(rec.events.length, 1);
      const m = rec.events[0];
      assert.deepEqual(Object.keys(m).sort(), ['by', 'commentId', 'excerpt', 'room', 'timestamp']);
      assert.equal(m.commentId, c.id);
      assert.equal(m.room, room);
      assert.deepEqual(m.by, { id: uid, name: 'Author Name' });
      assert.equal(m.excerpt, `\u{1D11E}${'a'.repeat(99)}`);
      assertRecentIso(m.timestamp);
    }
    assert.deepEqual(recs[2].events, []);
    const next = waitFor(tab1, 'mention');
    const short = await newComment(author, { room, content: 'short one', mentions: [mid] });
    const m2 = await next;
    assert.equal(m2.commentId, short.id);
    assert.equal(m2.excerpt, 'short one');
    for (const s of [author, tab1, tab2, bystander]) s.close();
  });

  test('an offline mentioned user gets it on the next connect with offline: true, once', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const mid = uniq('offline');
    const author = await connectAs(server, { userId: uid, projects: [p] });
    const c = await newComment(author, { room, content: 'while you were away', mentions: [mid] });
    const { s, recs } = await connectRecording(server, { userId: mid }, ['mention']);
    assert.equal(recs.mention.events.length, 1);
    const m = recs.mention.events[0];
    assert.deepEqual(Object.keys(m).sort(), ['by', 'commentId', 'excerpt', 'offline', 'room', 'timestamp']);
    assert.equal(m.commentId, c.id);
    assert.equal(m.room, room);
    assert.deepEqual(m.by, { id: uid, name: uid });
    assert.equal(m.excerpt, 'while you were away');
    assert.equal(m.offline, true);
    assert.match(m.timestamp, ISO_UTC);
    const again = await connectRecording(server, { userId: mid }, ['mention']);
    await flush(server, again.s);
    assert.deepEqual(again.recs.mention.events, []);
    author.close();
    s.close();
    again.s.close();
  });

  test('edits do not re-send mentions (online or offline)', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const author = await connectAs(server, { userId: uniq('author'), projects: [p] });
    const onId = uniq('on');
    const offId = uniq('off');
    const online = await connectAs(server, { userId: onId });
    const got = record(online, 'mention');
    const c = await newComment(author, { room, content: 'v1', mentions: [onId, offId] });
    await flush(server, online);
    assert.equal(got.events.length, 1);
    const ack = await emitAck(author, 'edit_comment', { id: c.id, content: 'v2' });
    assert.equal(ack.success, true, JSON.stringify(ack));
    await flush(server, online);
    assert.equal(got.events.length, 1, 'edit re-sent a mention');
    const { s, recs } = await connectRecording(server, { userId: offId }, ['mention']);
    assert.equal(recs.mention.events.length, 1, 'offline user must get exactly the original mention');
    assert.equal(recs.mention.events[0].excerpt, 'v1');
    for (const x of [author, online, s]) x.close();
  });
});

describe('cluster: new_comment on A reaches a room member on B', () => {
  let cluster;
  before(async () => {
    cluster = await startCluster(2);
  });
  after(() => cluster.stop());

  test('the member on B gets new_comment equal to the ack; list_comments on B sees it', async () => {
    const [A, B] = cluster.instances;
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const author = await connectAs(A, { userId: uid, projects: [p] });
    const authorOnB = await connectAs(B, { userId: uid, projects: [p] });
    const member = await connectAs(B, { userId: uniq('m'), projects: [p] });
    await join(member, room);
    await join(authorOnB, room);
    const atMember = waitFor(member, 'new_comment');
    const atAuthorB = waitFor(authorOnB, 'new_comment');
    const c = await newComment(author, { room, content: 'across instances' });
    assert.deepEqual(await atMember, c);
    assert.deepEqual(await atAuthorB, c);
    assert.deepEqual(await emitAck(member, 'list_comments', { room }), { success: true, comments: [c], hasMore: false });
    const deleted = waitFor(member, 'comment_deleted');
    assert.deepEqual(await emitAck(author, 'delete_comment', { id: c.id }), { success: true, id: c.id });
    assert.equal((await deleted).id, c.id);
    for (const s of [author, authorOnB, member]) s.close();
  });
});

describe('cluster: mention of a user connected only on B', () => {
  let cluster;
  before(async () => {
    cluster = await startCluster(2);
  });
  after(() => cluster.stop());

  test('delivered live on B (not queued for later)', async () => {
    const [A, B] = cluster.instances;
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('author');
    const mid = uniq('onB');
    const author = await connectAs(A, { userId: uid, projects: [p] });
    const target = await connectAs(B, { userId: mid });
    const got = waitFor(target, 'mention');
    const c = await newComment(author, { room, content: 'ping across', mentions: [mid] });
    const m = await got;
    assert.deepEqual(Object.keys(m).sort(), ['by', 'commentId', 'excerpt', 'room', 'timestamp']);
    assert.equal(m.commentId, c.id);
    assert.deepEqual(m.by, { id: uid, name: uid });
    // not also queued: a later connect gets nothing
    const { s, recs } = await connectRecording(A, { userId: mid }, ['mention']);
    await flush(A, s);
    assert.deepEqual(recs.mention.events, []);
    for (const x of [author, target, s]) x.close();
  });
});
