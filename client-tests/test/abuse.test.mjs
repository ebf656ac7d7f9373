// Smaller abuses of issue 13 (finding 10): text that is blank once sanitised, invisible and
// bidi characters in file names, and deeply nested JSON. The bigger ones have their tests
// next to the feature: typing floods (typing.test.mjs), one user filling a room
// (rooms.test.mjs), the stream budget (documents.test.mjs).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { assertErrorAck, connectAs, emitAck, flush, record, serverPool, signToken, uniq } from './helpers.mjs';

const { start } = serverPool(after);
const dirs = [];
after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

describe('abuse (default settings)', () => {
  let server;
  before(async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-abuse-'));
    dirs.push(dir);
    server = await start({ DOCUMENTS_DIR: dir });
  });

  // `<b></b>` used to be stored and relayed: ammonia keeps the tags, so the text was not
  // empty, but it shows nothing.
  test('a comment, an edit or a direct message blank once sanitised is INVALID_PAYLOAD, nothing stored or sent', async () => {
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const author = await connectAs(server, { userId: uniq('a'), projects: [p] });
    const toId = uniq('to');
    const reader = await connectAs(server, { userId: toId, projects: [p] });
    assert.equal((await emitAck(reader, 'join_room', room)).success, true);
    const comments = record(reader, 'new_comment');
    const dms = record(reader, 'direct_message');
    const blanks = ['<b></b>', '<p> </p>', '<b>&nbsp;</b>', '<br><br>', '<script>alert(1)</script>', '<i>\u200B\u202E</i>', '<a href="https://e.com"></a>'];
    for (const content of blanks) {
      assertErrorAck(await emitAck(author, 'new_comment', { room, content }), 'INVALID_PAYLOAD');
      assertErrorAck(await emitAck(author, 'direct_message', { to: toId, message: content }), 'INVALID_PAYLOAD');
    }
    const ack = await emitAck(author, 'new_comment', { room, content: '<b>ok</b>' });
    assert.equal(ack.success, true, JSON.stringify(ack));
    assert.equal(ack.comment.content, '<b>ok</b>');
    for (const content of blanks) {
      assertErrorAck(await emitAck(author, 'edit_comment', { id: ack.comment.id, content }), 'INVALID_PAYLOAD');
    }
    await flush(server, reader);
    assert.deepEqual(comments.events, [ack.comment], 'only the visible comment was relayed');
    assert.deepEqual(dms.events, []);
    const list = await emitAck(author, 'list_comments', { room });
    assert.deepEqual(list.comments.map((c) => c.content), ['<b>ok</b>']);
    author.close();
    reader.close();
  });

  // `invoice\u202Efdp.exe` shows as `invoiceexe.pdf`.
  test('bidi, format and separator characters are removed from file names; a name of nothing else is INVALID_PAYLOAD', async () => {
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const cases = [
      ['invoice\u202Efdp.exe', 'invoicefdp.exe'],
      ['\u2066report\u2069\u200F.pdf', 'report.pdf'],
      ['a\u200Eb\u202Ac\u202Bd\u202Ce\u202Df\u2067g\u2068h.txt', 'abcdefgh.txt'],
      ['line\u2028para\u2029.txt', 'linepara.txt'],
      ['\uFEFFzero\u200Bwidth\u2060.txt', 'zerowidth.txt'],
      ['tab\tnew\nline\u0085.txt', 'tabnewline.txt'],
    ];
    const data = crypto.randomBytes(1000);
    for (const [filename, stored] of cases) {
      const start = await emitAck(s, 'document_upload_start', { projectId: p, filename, size: data.length });
      assert.equal(start.success, true, JSON.stringify(start));
      assert.equal((await emitAck(s, 'document_upload_chunk', { uploadId: start.uploadId, index: 0, data })).success, true);
      const done = await emitAck(s, 'document_upload_complete', { uploadId: start.uploadId });
      assert.equal(done.success, true, JSON.stringify(done));
      assert.equal(done.document.filename, stored, JSON.stringify(filename));
    }
    const listed = await emitAck(s, 'list_documents', { projectId: p });
    assert.deepEqual(listed.documents.map((d) => d.filename).sort(), cases.map(([, stored]) => stored).sort());
    for (const filename of ['\u202E', '\u200E\u200F \u2066', 'dir/\u202E']) {
      assertErrorAck(await emitAck(s, 'document_upload_start', { projectId: p, filename, size: 10 }), 'INVALID_PAYLOAD');
    }
    s.close();
  });
});

/** A raw websocket with its socket.io CONNECT done; `outcome(id)` waits for ack `id` or the close. */
async function rawSocket(server, claims) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  let closed = false;
  const waiters = new Set();
  const wake = () => waiters.forEach((w) => w());
  await new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const f = data.toString();
      if (f === '2') return ws.send('3');
      if (f.startsWith('0')) return ws.send(`40${JSON.stringify({ token: signToken(claims) })}`);
      if (f.startsWith('40')) resolve();
      frames.push(f);
      wake();
    });
    ws.on('close', () => {
      closed = true;
      wake();
    });
    ws.on('error', reject);
  });
  const outcome = (id, ms = 3000) =>
    new Promise((resolve) => {
      const check = () => {
        const f = frames.find((x) => x.startsWith(`43${id}[`));
        if (f) return done({ kind: 'ack', value: JSON.parse(f.slice(`43${id}`.length))[0] });
        if (closed) return done({ kind: 'closed' });
      };
      const timer = setTimeout(() => done({ kind: 'none' }), ms);
      const done = (v) => {
        clearTimeout(timer);
        waiters.delete(check);
        resolve(v);
      };
      waiters.add(check);
      check();
    });
  return { ws, frames, outcome, get closed() { return closed; } };
}

// docs/security.md said deep JSON closed the connection, while an event's arguments nested
// 100,000 deep were answered INVALID_PAYLOAD. The Node server's JSON.parse takes any depth
// (V8 parses iteratively) and its handler then refuses the shape: INVALID_PAYLOAD, the
// connection stays. Trestle does the same without building the structure (serde_json stops
// at 128 levels); a packet that is not an event at all (a deep array as the event name)
// closes the connection, as socket.io's parser does.
describe('deeply nested JSON', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('arguments nested 100,000 deep are INVALID_PAYLOAD and the socket goes on; as the event name they close the connection', async () => {
    const p = uniq('p');
    const claims = { userId: uniq('u'), projects: [p] };
    const arrays = '['.repeat(100_000) + ']'.repeat(100_000);
    const objects = '{"a":'.repeat(100_000) + '1' + '}'.repeat(100_000);
    for (const deep of [arrays, objects]) {
      const c = await rawSocket(server, claims);
      const frames = [
        `["join_room",${deep}]`,
        `["typing_comment",${deep}]`,
        `["new_comment",{"room":"project:${p}:comments","content":"x","extra":${deep}}]`,
        `["broadcast_room","project:${p}","drawing_moved",${deep}]`,
      ];
      for (const [i, frame] of frames.entries()) {
        c.ws.send(`42${i + 1}${frame}`);
        const out = await c.outcome(i + 1);
        assert.equal(out.kind, 'ack', `${frame.slice(0, 40)}: ${out.kind}`);
        assertErrorAck(out.value, 'INVALID_PAYLOAD');
      }
      c.ws.send(`429["join_room","project:${p}"]`);
      assert.deepEqual((await c.outcome(9)).value, { success: true, room: `project:${p}`, size: 1 });
      c.ws.terminate();

      const d = await rawSocket(server, claims);
      d.ws.send(`421[${deep}]`);
      assert.equal((await d.outcome(1)).kind, 'closed', 'a deep array as the event name');
      d.ws.terminate();
    }
  });
});
