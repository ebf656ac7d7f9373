// Sections 4 (document_upload_start, _chunk, _status, _complete, _abort, document_stream,
// document_stream_cancel, list_documents), 9 (document size, upload chunks not rate-limited) and
// 10 (Uploads, Streaming): chunked uploads with their order and size rules, resuming an upload
// on another instance, streams paced by the client's acks (from an offset, clamped chunk sizes,
// cancel, document_complete after the last ack, the ack timeout, bounded server memory with
// clients that stop reading), access, and Trestle's own per-user upload and per-socket stream
// limits (expected to fail on the reference).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  assertErrorAck,
  assertRecentIso,
  connectAs,
  emitAck,
  flush,
  record,
  startServer,
  uniq,
  waitFor,
  waitUntil,
} from './helpers.mjs';
import { startCluster } from './services.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB; // the upload chunkSize of section 10

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ servers and temp dirs

// Every server gets a DOCUMENTS_DIR of its own (the reference otherwise shares one tmp dir
// between all its processes); a cluster shares one between its instances.
const servers = [];
const clusters = [];
const dirs = [];
after(async () => {
  await Promise.all([...servers.map((s) => s.stop()), ...clusters.map((c) => c.stop())]);
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir() {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-docs-'));
  dirs.push(d);
  return d;
}

async function start(env = {}) {
  const s = await startServer({ DOCUMENTS_DIR: tempDir(), ...env });
  servers.push(s);
  return s;
}

// One server with the default limits for most tests (started on first use).
let mainServer = null;
const main = () => (mainServer ??= start());

// ------------------------------------------------------------------ small helpers

const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex');
const chunkCount = (size) => Math.ceil(size / CHUNK);
const chunkOf = (data, i) => data.subarray(i * CHUNK, Math.min(data.length, (i + 1) * CHUNK));

/** An id of the same format as `id` that names nothing (its last character changed). */
const siblingId = (id) => id.slice(0, -1) + (id.endsWith('0') ? '1' : '0');

function toBuf(x) {
  if (Buffer.isBuffer(x)) return x;
  if (x instanceof ArrayBuffer) return Buffer.from(x);
  if (ArrayBuffer.isView(x)) return Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  assert.fail(`chunk data is not binary: ${typeof x} ${JSON.stringify(x)?.slice(0, 100)}`);
}

/** Resident memory of a process in bytes (Linux). */
function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, `no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}
const mib = (bytes) => `${(bytes / MiB).toFixed(1)} MiB`;

/** Emits and asserts a success ack; resolves with it. */
async function ok(socket, event, payload) {
  const ack = await emitAck(socket, event, payload);
  assert.equal(ack?.success, true, `${event} ${JSON.stringify(payload)?.slice(0, 200)}: ${JSON.stringify(ack)}`);
  return ack;
}

// ------------------------------------------------------------------ upload helpers

/** document_upload_start, asserting the ack `{ success, uploadId, chunkSize: 65536 }`. */
async function startUpload(socket, { projectId, filename = 'file.bin', size, documentType, sha256: declared }) {
  const payload = { projectId, filename, size };
  if (documentType !== undefined) payload.documentType = documentType;
  if (declared !== undefined) payload.sha256 = declared;
  const ack = await ok(socket, 'document_upload_start', payload);
  assert.deepEqual(Object.keys(ack).sort(), ['chunkSize', 'success', 'uploadId'], `start ack: ${JSON.stringify(ack)}`);
  assert.equal(ack.chunkSize, CHUNK);
  assert.equal(typeof ack.uploadId, 'string');
  assert.ok(ack.uploadId.length > 0, 'empty uploadId');
  return ack.uploadId;
}

const sendChunk = (socket, uploadId, index, data) => emitAck(socket, 'document_upload_chunk', { uploadId, index, data });

/** Sends chunks [from, to) of `data` one after the other, each ack `{ success, receivedBytes }` exact. */
async function sendChunks(socket, uploadId, data, from = 0, to = chunkCount(data.length)) {
  for (let i = from; i < to; i++) {
    const ack = await sendChunk(socket, uploadId, i, chunkOf(data, i));
    assert.deepEqual(ack, { success: true, receivedBytes: Math.min(data.length, (i + 1) * CHUNK) }, `chunk ${i}`);
  }
}

/** Checks a document object (section 10) against what was uploaded. */
function assertDocument(doc, { projectId, filename, documentType = 'document', data, uploadedBy }) {
  assert.deepEqual(
    Object.keys(doc).sort(),
    ['documentType', 'filename', 'id', 'projectId', 'sha256', 'size', 'timestamp', 'uploadedBy'],
    `document keys: ${JSON.stringify(doc)}`,
  );
  assert.equal(typeof doc.id, 'string');
  assert.ok(doc.id.length > 0, 'empty document id');
  assert.equal(doc.projectId, projectId);
  assert.equal(doc.filename, filename);
  assert.equal(doc.documentType, documentType);
  assert.equal(doc.size, data.length);
  assert.equal(doc.sha256, sha256(data));
  assert.equal(doc.uploadedBy, uploadedBy);
  assertRecentIso(doc.timestamp);
}

/** document_upload_complete, asserting `{ success, document }`; resolves with the document. */
async function completeUpload(socket, uploadId) {
  const ack = await ok(socket, 'document_upload_complete', { uploadId });
  assert.deepEqual(Object.keys(ack).sort(), ['document', 'success'], `complete ack: ${JSON.stringify(ack)}`);
  return ack.document;
}

/** Start, every chunk, complete; resolves with the checked document. */
async function uploadDocument(socket, { projectId, data, filename = 'file.bin', documentType, uploadedBy }) {
  const uploadId = await startUpload(socket, { projectId, filename, size: data.length, documentType });
  await sendChunks(socket, uploadId, data);
  const doc = await completeUpload(socket, uploadId);
  assertDocument(doc, { projectId, filename, documentType, data, uploadedBy });
  return doc;
}

async function listDocuments(socket, projectId) {
  const ack = await ok(socket, 'list_documents', { projectId });
  assert.deepEqual(Object.keys(ack).sort(), ['documents', 'success'], `list ack: ${JSON.stringify(ack)}`);
  assert.ok(Array.isArray(ack.documents), 'documents is not an array');
  return ack.documents;
}

// ------------------------------------------------------------------ stream helper

/**
 * document_stream, acking every document_chunk as it arrives. Resolves once
 * document_complete has arrived (and a flush has shown nothing follows it) with
 * `{ ack, chunks, complete, data, chunkLen }`; `data` is the bytes from the first chunk's
 * offset to the end. Checks: the ack's shape, each chunk's shape, consecutive chunkIndex,
 * offset = chunkIndex × chunk length, totalChunks constant and equal to the ack's, the last
 * chunk ending at the document's end, document_complete after the last chunk.
 */
async function streamAll(server, socket, documentId, request = {}, timeoutMs = 30_000) {
  const chunks = [];
  let complete = null;
  let lateChunk = null;
  let onChunk;
  let onComplete;
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no document_complete within ${timeoutMs} ms (${chunks.length} chunks received)`)),
      timeoutMs,
    );
    onChunk = (c, ack) => {
      if (c?.documentId !== documentId) return;
      if (complete) lateChunk = c.chunkIndex;
      if (typeof ack !== 'function') return reject(new Error('document_chunk carries no ack callback'));
      if (!Buffer.isBuffer(c.data) && !(c.data instanceof ArrayBuffer) && !ArrayBuffer.isView(c.data)) {
        return reject(new Error(`document_chunk data is not binary: ${JSON.stringify(c).slice(0, 200)}`));
      }
      chunks.push({ ...c, data: toBuf(c.data) });
      ack();
    };
    onComplete = (c) => {
      if (c?.documentId !== documentId) return;
      if (complete) reject(new Error('a second document_complete'));
      complete = c;
      clearTimeout(timer);
      resolve();
    };
  });
  socket.on('document_chunk', onChunk);
  socket.on('document_complete', onComplete);
  try {
    const ack = await ok(socket, 'document_stream', { documentId, ...request });
    assert.deepEqual(Object.keys(ack).sort(), ['sha256', 'size', 'success', 'totalChunks'], `stream ack: ${JSON.stringify(ack)}`);
    await done;
    await flush(server, socket);
    assert.equal(lateChunk, null, `document_chunk ${lateChunk} arrived after document_complete`);
    assert.deepEqual(complete, { documentId, size: ack.size, sha256: ack.sha256 }, 'document_complete');

    assert.ok(chunks.length > 0 || (request.offset ?? 0) === ack.size, 'no chunks');
    const chunkLen = chunks[0].data.length;
    const firstIndex = chunks[0].chunkIndex;
    chunks.forEach((c, i) => {
      assert.deepEqual(Object.keys(c).sort(), ['chunkIndex', 'data', 'documentId', 'offset', 'totalChunks'], `chunk keys`);
      assert.equal(c.chunkIndex, firstIndex + i, 'chunkIndex not consecutive');
      assert.equal(c.totalChunks, ack.totalChunks, 'totalChunks differs from the ack');
      assert.equal(c.offset, c.chunkIndex * chunkLen, `chunk ${c.chunkIndex}: offset ${c.offset}`);
      if (i < chunks.length - 1) assert.equal(c.data.length, chunkLen, `chunk ${c.chunkIndex} is short`);
    });
    const last = chunks[chunks.length - 1];
    assert.equal(last.chunkIndex, ack.totalChunks - 1, 'the last chunk is not chunk totalChunks-1');
    assert.equal(last.offset + last.data.length, ack.size, 'the last chunk does not end at the document end');
    assert.ok(last.data.length > 0 && last.data.length <= chunkLen);
    return { ack, chunks, complete, data: Buffer.concat(chunks.map((c) => c.data)), chunkLen };
  } finally {
    socket.off('document_chunk', onChunk);
    socket.off('document_complete', onComplete);
  }
}

// ------------------------------------------------------------------ shared fixture

/**
 * Uploads `size` random bytes once per size on the main server (the 50 MiB document serves
 * both the round trip and the memory test), recording the upload_progress events and who got
 * document_uploaded: the uploader (the sender is included), another member, an outsider.
 */
const fixtures = new Map();
function uploaded(size, documentType) {
  if (!fixtures.has(size)) fixtures.set(size, uploadWithWitnesses(size, documentType));
  return fixtures.get(size);
}

async function uploadWithWitnesses(size, documentType) {
  const server = await main();
  const p = uniq('p');
  const uploaderId = uniq('uploader');
  const uploader = await connectAs(server, { userId: uploaderId, projects: [p] });
  const member = await connectAs(server, { userId: uniq('member'), projects: [p] });
  const outsider = await connectAs(server, { userId: uniq('outsider'), projects: [uniq('p')] });
  const data = crypto.randomBytes(size);
  const filename = `random-${size}.bin`;
  const progress = record(uploader, 'upload_progress');
  const announced = [uploader, member, outsider].map((s) => record(s, 'document_uploaded'));
  const t0 = performance.now();
  const uploadId = await startUpload(uploader, { projectId: p, filename, size, documentType });
  // 800 chunks for 50 MiB on one socket: far over the 100 events a minute, which upload
  // chunks do not count against (section 9).
  await sendChunks(uploader, uploadId, data);
  const uploadMs = performance.now() - t0;
  const doc = await completeUpload(uploader, uploadId);
  const totalMs = performance.now() - t0;
  await flush(server, uploader, member, outsider);
  progress.stop();
  for (const r of announced) r.stop();
  return { server, p, data, doc, filename, uploadId, uploader, member, uploaderId, progress: progress.events, announced: announced.map((r) => r.events), uploadMs, totalMs };
}

/**
 * upload_progress events: exactly one per accepted new chunk, in order (contract section 10,
 * Uploads: none dropped or merged, none for a resent chunk), each with the bytes received so
 * far and their integer percentage; the last one 100.
 */
function assertProgress(events, uploadId, size) {
  const expected = chunkCount(size);
  assert.equal(events.length, expected, `${events.length} upload_progress events for ${expected} chunks`);
  events.forEach((e, i) => {
    assert.deepEqual(Object.keys(e).sort(), ['progress', 'receivedBytes', 'totalBytes', 'uploadId'], `upload_progress: ${JSON.stringify(e)}`);
    assert.equal(e.uploadId, uploadId);
    assert.equal(e.totalBytes, size);
    assert.equal(e.receivedBytes, Math.min((i + 1) * CHUNK, size), `event ${i}: ${JSON.stringify(e)}`);
    assert.ok(Number.isInteger(e.progress) && e.progress >= 0 && e.progress <= 100, `progress: ${JSON.stringify(e)}`);
    // an integer percentage of receivedBytes (rounded either way)
    assert.ok(Math.abs(e.progress - (e.receivedBytes * 100) / size) < 1, `progress does not match receivedBytes: ${JSON.stringify(e)}`);
  });
  assert.equal(events.at(-1).progress, 100);
}

// ------------------------------------------------------------------ tests

describe('upload in 64 KiB chunks, stream back', () => {
  for (const [size, label, documentType] of [
    [3 * MiB, '3 MiB', undefined],
    [50 * MiB, '50 MiB', 'spec'],
  ]) {
    test(`${label}: document shape, upload_progress, document_uploaded to project:{p} only, list_documents, streamed back byte for byte`, async (t) => {
      const f = await uploaded(size, documentType);
      t.diagnostic(`${label}: ${chunkCount(size)} chunks sent one at a time in ${Math.round(f.uploadMs)} ms, complete after ${Math.round(f.totalMs)} ms, ${f.progress.length} upload_progress events`);
      assertDocument(f.doc, { projectId: f.p, filename: f.filename, documentType, data: f.data, uploadedBy: f.uploaderId });
      assertProgress(f.progress, f.uploadId, size);
      assert.ok(f.uploadMs < 30_000, `uploading ${label} took ${f.uploadMs} ms`);

      const expected = {
        projectId: f.p,
        documentId: f.doc.id,
        documentType: f.doc.documentType,
        filename: f.doc.filename,
        uploadedBy: f.uploaderId,
        size,
        timestamp: f.doc.timestamp,
      };
      const [atUploader, atMember, atOutsider] = f.announced;
      assert.deepEqual(atUploader, [expected], 'the uploader (in project:{p}) gets document_uploaded');
      assert.deepEqual(atMember, [expected], 'another member of project:{p} gets document_uploaded');
      assert.deepEqual(atOutsider, [], 'a user outside the project got document_uploaded');

      const listed = await listDocuments(f.member, f.p);
      assert.deepEqual(listed, [f.doc]);

      // streamed to another member of the project, with the default chunk size
      const t0 = performance.now();
      const got = await streamAll(f.server, f.member, f.doc.id);
      t.diagnostic(`${label}: streamed back in ${got.chunks.length} chunks of ${got.chunkLen} bytes in ${Math.round(performance.now() - t0)} ms`);
      assert.deepEqual({ size: got.ack.size, sha256: got.ack.sha256 }, { size, sha256: f.doc.sha256 });
      assert.equal(got.ack.totalChunks, Math.ceil(size / got.chunkLen));
      assert.equal(got.chunks[0].chunkIndex, 0);
      assert.ok(got.chunkLen >= KiB && got.chunkLen <= MiB, `default chunk of ${got.chunkLen} bytes`);
      assert.equal(got.data.length, size);
      assert.equal(sha256(got.data), f.doc.sha256);
      assert.ok(got.data.equals(f.data), 'streamed bytes differ from the upload');
    });
  }

  test('a sha256 declared at start that matches (any hex case) is accepted', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const data = crypto.randomBytes(CHUNK + 17);
    const uploadId = await startUpload(s, { projectId: p, filename: 'declared.bin', size: data.length, sha256: sha256(data).toUpperCase() });
    await sendChunks(s, uploadId, data);
    const doc = await completeUpload(s, uploadId);
    assertDocument(doc, { projectId: p, filename: 'declared.bin', data, uploadedBy: uid });
    s.close();
  });
});

describe('sha256 mismatch', () => {
  test('complete is INVALID_PAYLOAD; the upload is discarded (status and complete NOT_FOUND), nothing listed, nothing announced', async () => {
    const server = await main();
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const announced = record(s, 'document_uploaded');
    const data = crypto.randomBytes(2 * CHUNK + 1000);
    const wrong = sha256(Buffer.concat([data, Buffer.from('x')]));
    const uploadId = await startUpload(s, { projectId: p, size: data.length, sha256: wrong });
    await sendChunks(s, uploadId, data);
    assertErrorAck(await emitAck(s, 'document_upload_complete', { uploadId }), 'INVALID_PAYLOAD');
    assert.deepEqual(await listDocuments(s, p), []);
    assertErrorAck(await emitAck(s, 'document_upload_status', { uploadId }), 'NOT_FOUND');
    assertErrorAck(await emitAck(s, 'document_upload_complete', { uploadId }), 'NOT_FOUND');
    assertErrorAck(await sendChunk(s, uploadId, 0, chunkOf(data, 0)), 'NOT_FOUND');
    await flush(server, s);
    assert.deepEqual(announced.events, []);
    s.close();
  });
});

describe('cluster: an upload interrupted by a disconnect resumes on another instance', () => {
  let cluster;
  test('half via A, reconnect to B: status gives the resume point, finish and complete on B, stream back from A', async () => {
    // The instances share one DOCUMENTS_DIR, as a deployment shares its document storage.
    cluster = await startCluster(2, { DOCUMENTS_DIR: tempDir() });
    clusters.push(cluster);
    const [A, B] = cluster.instances;
    const p = uniq('p');
    const uid = uniq('u');
    const data = crypto.randomBytes(20 * CHUNK + 1234); // 21 chunks, the last one short
    const total = chunkCount(data.length);
    const half = 10;

    const memberOnA = await connectAs(A, { userId: uniq('member'), projects: [p] });
    const announced = waitFor(memberOnA, 'document_uploaded', 10_000);

    const onA = await connectAs(A, { userId: uid, projects: [p] });
    const uploadId = await startUpload(onA, { projectId: p, filename: 'resumed.bin', size: data.length, documentType: 'report' });
    await sendChunks(onA, uploadId, data, 0, half);
    onA.close();

    const onB = await connectAs(B, { userId: uid, projects: [p] });
    const status = await ok(onB, 'document_upload_status', { uploadId });
    assert.equal(status.receivedBytes, half * CHUNK, `status: ${JSON.stringify(status)}`);
    assert.equal(status.nextIndex, half, `status: ${JSON.stringify(status)}`);
    // the last ack may have been lost with the connection: resending that chunk is harmless
    assert.deepEqual(await sendChunk(onB, uploadId, half - 1, chunkOf(data, half - 1)), { success: true, receivedBytes: half * CHUNK });
    await sendChunks(onB, uploadId, data, status.nextIndex, total);
    const doc = await completeUpload(onB, uploadId);
    assertDocument(doc, { projectId: p, filename: 'resumed.bin', documentType: 'report', data, uploadedBy: uid });

    assert.deepEqual(await announced, {
      projectId: p,
      documentId: doc.id,
      documentType: 'report',
      filename: 'resumed.bin',
      uploadedBy: uid,
      size: data.length,
      timestamp: doc.timestamp,
    });
    assert.deepEqual(await listDocuments(memberOnA, p), [doc]);
    const got = await streamAll(A, memberOnA, doc.id);
    assert.equal(got.ack.sha256, sha256(data));
    assert.ok(got.data.equals(data), 'bytes streamed from A differ from those uploaded through A and B');
    // after completion the upload is gone on every instance
    assertErrorAck(await emitAck(onB, 'document_upload_status', { uploadId }), 'NOT_FOUND');
    memberOnA.close();
    onB.close();
  });
});

describe('streaming: offset and chunkSize', () => {
  // 2 MiB + 300,000 bytes: 37 chunks of 64 KiB, 3 of 1 MiB, the last one short in both.
  const medium = crypto.randomBytes(2 * MiB + 300_000);
  const small = crypto.randomBytes(100_000);
  let ctx = null;
  async function setup() {
    if (ctx) return ctx;
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const mediumDoc = await uploadDocument(s, { projectId: p, data: medium, uploadedBy: uid });
    const smallDoc = await uploadDocument(s, { projectId: p, data: small, uploadedBy: uid });
    ctx = { server, s, mediumDoc, smallDoc };
    return ctx;
  }

  test('from an offset: the first chunk is offset/chunkSize with that offset; bytes match the original from there', async () => {
    const { server, s, mediumDoc } = await setup();
    const offset = 20 * CHUNK;
    const got = await streamAll(server, s, mediumDoc.id, { chunkSize: CHUNK, offset });
    assert.deepEqual(
      { size: got.ack.size, totalChunks: got.ack.totalChunks, sha256: got.ack.sha256 },
      { size: medium.length, totalChunks: Math.ceil(medium.length / CHUNK), sha256: sha256(medium) },
      'the ack describes the whole document',
    );
    assert.equal(got.chunks[0].chunkIndex, 20);
    assert.equal(got.chunks[0].offset, offset);
    assert.equal(got.chunkLen, CHUNK);
    assert.equal(got.chunks.length, Math.ceil(medium.length / CHUNK) - 20);
    assert.ok(got.data.equals(medium.subarray(offset)), 'bytes from the offset differ');
  });

  test('an offset that is not a multiple of chunkSize, or negative, is INVALID_PAYLOAD', async () => {
    const { server, s, mediumDoc } = await setup();
    const chunks = record(s, 'document_chunk');
    for (const req of [
      { chunkSize: CHUNK, offset: CHUNK + 1 },
      { chunkSize: CHUNK, offset: 1000 },
      { chunkSize: 4096, offset: 6144 },
      { chunkSize: CHUNK, offset: -CHUNK },
    ]) {
      assertErrorAck(await emitAck(s, 'document_stream', { documentId: mediumDoc.id, ...req }), 'INVALID_PAYLOAD');
    }
    await flush(server, s);
    assert.deepEqual(chunks.events, [], 'a refused stream sent chunks');
    chunks.stop();
  });

  test('chunkSize below 1 KiB is clamped to 1 KiB (offsets count in clamped chunks)', async () => {
    const { server, s, smallDoc } = await setup();
    const got = await streamAll(server, s, smallDoc.id, { chunkSize: 10 });
    assert.equal(got.chunkLen, KiB);
    assert.equal(got.ack.totalChunks, Math.ceil(small.length / KiB));
    assert.equal(got.chunks.length, got.ack.totalChunks);
    assert.ok(got.data.equals(small));
    const from = await streamAll(server, s, smallDoc.id, { chunkSize: 10, offset: 2 * KiB });
    assert.equal(from.chunks[0].chunkIndex, 2);
    assert.equal(from.chunks[0].offset, 2 * KiB);
    assert.ok(from.data.equals(small.subarray(2 * KiB)));
  });

  test('chunkSize above 1 MiB is clamped to 1 MiB', async () => {
    const { server, s, mediumDoc } = await setup();
    const got = await streamAll(server, s, mediumDoc.id, { chunkSize: 10 * MiB });
    assert.equal(got.chunkLen, MiB);
    assert.equal(got.ack.totalChunks, 3);
    assert.deepEqual(got.chunks.map((c) => c.data.length), [MiB, MiB, 300_000]);
    assert.ok(got.data.equals(medium));
  });
});

describe('clients that do not ack', () => {
  test('20 sockets streaming 50 MiB without acking: each holds 1 to 4 chunks and the server RSS stays flat', async (t) => {
    const f = await uploaded(50 * MiB, 'spec');
    const { server } = f;
    const N = 20;
    const sockets = [];
    for (let i = 0; i < N; i++) sockets.push(await connectAs(server, { userId: uniq(`reader${i}-`), projects: [f.p] }));
    const held = sockets.map(() => []); // [{ chunk, ack }] per socket, never acked (yet)
    const firsts = sockets.map((s, i) =>
      new Promise((resolve) => {
        s.on('document_chunk', (chunk, ack) => {
          held[i].push({ chunk, ack });
          resolve();
        });
      }),
    );

    const pid = server.proc.pid;
    const baseline = rssBytes(pid);
    for (const s of sockets) {
      const ack = await ok(s, 'document_stream', { documentId: f.doc.id, chunkSize: CHUNK });
      assert.equal(ack.totalChunks, 800);
    }
    await Promise.all(firsts);
    // Sample for 2 s: 20 unread streams of 50 MiB would be 1000 MiB if the server read ahead.
    let peak = baseline;
    for (let i = 0; i < 20; i++) {
      await delay(100);
      peak = Math.max(peak, rssBytes(pid));
    }
    await flush(server, ...sockets);
    const counts = held.map((h) => h.length);
    t.diagnostic(`server RSS: before ${mib(baseline)}, peak while 20 readers stall ${mib(peak)}, growth ${mib(peak - baseline)}`);
    t.diagnostic(`chunks held per stalled reader: ${counts.join(' ')}`);
    assert.ok(peak - baseline < 64 * MiB, `RSS grew by ${mib(peak - baseline)} with ${N} stalled readers`);
    for (const [i, n] of counts.entries()) assert.ok(n >= 1 && n <= 4, `reader ${i} got ${n} chunks without acking (window 4)`);
    for (const h of held) {
      h.forEach(({ chunk }, k) => assert.equal(chunk.chunkIndex, k, 'chunks of a stalled stream out of order'));
    }

    // The stalled stream is paused, not dropped: acking resumes it to the end.
    const reader = sockets[0];
    reader.removeAllListeners('document_chunk');
    const parts = held[0].map(({ chunk }) => toBuf(chunk.data));
    const done = waitFor(reader, 'document_complete', 30_000, (c) => c?.documentId === f.doc.id);
    reader.on('document_chunk', (chunk, ack) => {
      assert.equal(chunk.chunkIndex, parts.length, 'chunk out of order after resuming');
      parts.push(toBuf(chunk.data));
      ack();
    });
    for (const { ack } of held[0]) ack();
    assert.deepEqual(await done, { documentId: f.doc.id, size: f.data.length, sha256: f.doc.sha256 });
    assert.equal(parts.length, 800);
    assert.equal(sha256(Buffer.concat(parts)), f.doc.sha256);
    t.diagnostic(`server RSS after one reader resumed and finished: ${mib(rssBytes(pid))}`);
    for (const s of sockets) s.close();
  });
});

describe('document_stream_cancel', () => {
  test('stops the stream: nothing after the cancel ack, no document_complete; cancel again succeeds; a new stream starts afresh', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const data = crypto.randomBytes(MiB);
    const doc = await uploadDocument(s, { projectId: p, data, uploadedBy: uid });

    // 1024 chunks of 1 KiB, all acked: without the cancel they would keep coming
    const completes = record(s, 'document_complete');
    let cancelled = false;
    const before = [];
    const afterCancel = [];
    let tenth;
    const gotTen = new Promise((r) => (tenth = r));
    const onChunk = (c, ack) => {
      (cancelled ? afterCancel : before).push(c.chunkIndex);
      ack();
      if (before.length === 10) tenth();
    };
    s.on('document_chunk', onChunk);
    await ok(s, 'document_stream', { documentId: doc.id, chunkSize: KiB });
    await gotTen;
    // The flag is set in the ack callback itself, before any later packet is handled.
    const cancelAck = await new Promise((resolve, reject) => {
      s.timeout(3000).emit('document_stream_cancel', { documentId: doc.id }, (err, ack) => {
        cancelled = true;
        if (err) reject(err);
        else resolve(ack);
      });
    });
    assert.equal(cancelAck?.success, true, JSON.stringify(cancelAck));
    await flush(server, s);
    assert.deepEqual(afterCancel, [], 'chunks arrived after the cancel ack');
    assert.ok(before.length < 1024, 'the whole document arrived despite the cancel');
    assert.deepEqual(completes.events, [], 'document_complete after a cancel');
    s.off('document_chunk', onChunk);
    completes.stop();

    assert.equal((await ok(s, 'document_stream_cancel', { documentId: doc.id })).success, true, 'a second cancel');
    const again = await streamAll(server, s, doc.id, { chunkSize: CHUNK });
    assert.equal(again.chunks[0].chunkIndex, 0);
    assert.ok(again.data.equals(data));
    // cancelling a stream that has already completed is also fine
    assert.equal((await ok(s, 'document_stream_cancel', { documentId: doc.id })).success, true);
    s.close();
  });
});

describe('pacing', () => {
  test('document_complete waits for the ack of the last chunk', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const data = crypto.randomBytes(3 * KiB); // 3 chunks of 1 KiB: all within the window
    const doc = await uploadDocument(s, { projectId: p, data, uploadedBy: uid });
    const held = [];
    let all;
    const gotAll = new Promise((r) => (all = r));
    s.on('document_chunk', (chunk, ack) => {
      held.push({ chunk, ack });
      if (held.length === 3) all();
    });
    const completes = record(s, 'document_complete');
    await ok(s, 'document_stream', { documentId: doc.id, chunkSize: KiB });
    await gotAll;
    await flush(server, s);
    assert.deepEqual(completes.events, [], 'document_complete before the chunks were acked');
    held[0].ack();
    held[1].ack();
    await ok(s, 'list_documents', { projectId: p }); // a round trip for the acks to be handled
    await flush(server, s);
    assert.deepEqual(completes.events, [], 'document_complete before the last chunk was acked');
    const done = waitFor(s, 'document_complete');
    held[2].ack();
    assert.deepEqual(await done, { documentId: doc.id, size: data.length, sha256: sha256(data) });
    assert.ok(Buffer.concat(held.map((h) => toBuf(h.chunk.data))).equals(data));
    completes.stop();
    s.close();
  });

  test('a client silent for STREAM_ACK_TIMEOUT_MS (500 ms here) loses the stream: late acks bring nothing more', async () => {
    const server = await start({ STREAM_ACK_TIMEOUT_MS: 500 });
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const data = crypto.randomBytes(64 * KiB);
    const doc = await uploadDocument(s, { projectId: p, data, uploadedBy: uid });
    const held = [];
    let first;
    const gotFirst = new Promise((r) => (first = r));
    s.on('document_chunk', (chunk, ack) => {
      held.push({ index: chunk.chunkIndex, ack });
      first();
    });
    const completes = record(s, 'document_complete');
    await ok(s, 'document_stream', { documentId: doc.id, chunkSize: KiB });
    await gotFirst;
    await delay(1500); // past the server's ack timeout
    const n = held.length;
    assert.ok(n >= 1 && n <= 4, `${n} chunks sent without acks`);
    for (const { ack } of held) ack();
    await ok(s, 'list_documents', { projectId: p }); // a round trip for the late acks to be handled
    await flush(server, s);
    assert.equal(held.length, n, 'late acks revived the stream');
    assert.deepEqual(completes.events, []);
    s.removeAllListeners('document_chunk');
    completes.stop();
    // the document itself is still there for a new stream
    const again = await streamAll(server, s, doc.id, { chunkSize: 16 * KiB });
    assert.ok(again.data.equals(data));
    s.close();
  });
});

describe('access', () => {
  test("another project's document: stream, list and upload FORBIDDEN; an unknown documentId NOT_FOUND", async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const owner = await connectAs(server, { userId: uid, projects: [p] });
    const doc = await uploadDocument(owner, { projectId: p, data: crypto.randomBytes(5000), uploadedBy: uid });
    const outsider = await connectAs(server, { userId: uniq('out'), projects: [uniq('p')] });
    const chunks = record(outsider, 'document_chunk');
    assertErrorAck(await emitAck(outsider, 'document_stream', { documentId: doc.id }), 'FORBIDDEN');
    assertErrorAck(await emitAck(outsider, 'list_documents', { projectId: p }), 'FORBIDDEN');
    assertErrorAck(await emitAck(outsider, 'document_upload_start', { projectId: p, filename: 'x.bin', size: 10 }), 'FORBIDDEN');
    const unknown = siblingId(doc.id);
    assertErrorAck(await emitAck(owner, 'document_stream', { documentId: unknown }), 'NOT_FOUND');
    assertErrorAck(await emitAck(outsider, 'document_stream', { documentId: unknown }), 'NOT_FOUND');
    await flush(server, outsider);
    assert.deepEqual(chunks.events, []);
    // the owner still sees only its document
    assert.deepEqual(await listDocuments(owner, p), [doc]);
    owner.close();
    outsider.close();
  });
});

describe('sizes', () => {
  test('declared size over MAX_DOCUMENT_BYTES (1 MiB here) is TOO_LARGE at start; exactly the limit is accepted', async () => {
    const server = await start({ MAX_DOCUMENT_BYTES: MiB });
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    assertErrorAck(await emitAck(s, 'document_upload_start', { projectId: p, filename: 'big.bin', size: MiB + 1 }), 'TOO_LARGE');
    const uploadId = await startUpload(s, { projectId: p, filename: 'max.bin', size: MiB });
    assert.equal((await ok(s, 'document_upload_abort', { uploadId })).success, true);
    s.close();
  });

  test('the default limit is 100 MiB: 100 MiB + 1 TOO_LARGE, 100 MiB accepted', async () => {
    const server = await main();
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    assertErrorAck(await emitAck(s, 'document_upload_start', { projectId: p, filename: 'big.bin', size: 100 * MiB + 1 }), 'TOO_LARGE');
    const uploadId = await startUpload(s, { projectId: p, filename: 'max.bin', size: 100 * MiB });
    assert.equal((await ok(s, 'document_upload_abort', { uploadId })).success, true);
    s.close();
  });

  test('chunk lengths: a short middle chunk and an overlong last chunk are INVALID_PAYLOAD; a chunk past the end is TOO_LARGE', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const data = crypto.randomBytes(100_000); // chunk 0: 65,536 bytes, chunk 1: 34,464
    const uploadId = await startUpload(s, { projectId: p, filename: 'exact.bin', size: data.length });
    assertErrorAck(await sendChunk(s, uploadId, 0, data.subarray(0, 1000)), 'INVALID_PAYLOAD');
    assertErrorAck(await sendChunk(s, uploadId, 0, Buffer.alloc(0)), 'INVALID_PAYLOAD');
    await sendChunks(s, uploadId, data, 0, 1);
    // a full 64 KiB where only 34,464 bytes remain: "a chunk of the wrong length"
    assertErrorAck(await sendChunk(s, uploadId, 1, crypto.randomBytes(CHUNK)), 'INVALID_PAYLOAD');
    assertErrorAck(await sendChunk(s, uploadId, 1, data.subarray(CHUNK, CHUNK + 1000)), 'INVALID_PAYLOAD');
    assert.deepEqual(await ok(s, 'document_upload_status', { uploadId }).then((a) => [a.receivedBytes, a.nextIndex]), [CHUNK, 1]);
    await sendChunks(s, uploadId, data, 1, 2);
    // every declared byte is in: chunk 2 is "more bytes than declared"
    assertErrorAck(await sendChunk(s, uploadId, 2, crypto.randomBytes(CHUNK)), 'TOO_LARGE');
    assertErrorAck(await sendChunk(s, uploadId, 2, Buffer.from([1])), 'TOO_LARGE');
    const status = await ok(s, 'document_upload_status', { uploadId });
    assert.deepEqual([status.receivedBytes, status.nextIndex], [100_000, 2]);
    const doc = await completeUpload(s, uploadId);
    assertDocument(doc, { projectId: p, filename: 'exact.bin', data, uploadedBy: uid });
    s.close();
  });
});

describe('upload rules', () => {
  test('order: a resent earlier chunk succeeds and changes nothing; skipping ahead CONFLICT; completing early CONFLICT', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const progress = record(s, 'upload_progress');
    const data = crypto.randomBytes(3 * CHUNK + 100); // 4 chunks
    const uploadId = await startUpload(s, { projectId: p, filename: 'order.bin', size: data.length });
    assertErrorAck(await sendChunk(s, uploadId, 1, chunkOf(data, 1)), 'CONFLICT');
    await sendChunks(s, uploadId, data, 0, 2);
    // resends (even with other bytes) are acknowledged with the unchanged count
    assert.deepEqual(await sendChunk(s, uploadId, 0, chunkOf(data, 0)), { success: true, receivedBytes: 2 * CHUNK });
    assert.deepEqual(await sendChunk(s, uploadId, 1, crypto.randomBytes(CHUNK)), { success: true, receivedBytes: 2 * CHUNK });
    assertErrorAck(await sendChunk(s, uploadId, 3, chunkOf(data, 3)), 'CONFLICT');
    assertErrorAck(await emitAck(s, 'document_upload_complete', { uploadId }), 'CONFLICT');
    const status = await ok(s, 'document_upload_status', { uploadId });
    assert.deepEqual([status.receivedBytes, status.nextIndex], [2 * CHUNK, 2], `status: ${JSON.stringify(status)}`);
    await sendChunks(s, uploadId, data, 2, 4);
    const doc = await completeUpload(s, uploadId);
    // the replaced bytes of the resent chunk 1 were not stored
    assertDocument(doc, { projectId: p, filename: 'order.bin', data, uploadedBy: uid });
    await flush(server, s);
    progress.stop();
    assertProgress(progress.events, uploadId, data.length);
    s.close();
  });

  test("another user's upload is FORBIDDEN for chunk, status, complete and abort, and stays intact; unknown uploadId NOT_FOUND", async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const other = await connectAs(server, { userId: uniq('other'), projects: [p] }); // same project, other user
    const data = crypto.randomBytes(CHUNK + 10);
    const uploadId = await startUpload(s, { projectId: p, filename: 'mine.bin', size: data.length });
    await sendChunks(s, uploadId, data, 0, 1);
    assertErrorAck(await sendChunk(other, uploadId, 1, chunkOf(data, 1)), 'FORBIDDEN');
    assertErrorAck(await emitAck(other, 'document_upload_status', { uploadId }), 'FORBIDDEN');
    assertErrorAck(await emitAck(other, 'document_upload_complete', { uploadId }), 'FORBIDDEN');
    assertErrorAck(await emitAck(other, 'document_upload_abort', { uploadId }), 'FORBIDDEN');
    const status = await ok(s, 'document_upload_status', { uploadId });
    assert.deepEqual([status.receivedBytes, status.nextIndex], [CHUNK, 1]);

    const unknown = siblingId(uploadId);
    assertErrorAck(await sendChunk(s, unknown, 0, chunkOf(data, 0)), 'NOT_FOUND');
    for (const event of ['document_upload_status', 'document_upload_complete', 'document_upload_abort']) {
      assertErrorAck(await emitAck(s, event, { uploadId: unknown }), 'NOT_FOUND');
    }
    await sendChunks(s, uploadId, data, 1, 2);
    assertDocument(await completeUpload(s, uploadId), { projectId: p, filename: 'mine.bin', data, uploadedBy: uid });
    s.close();
    other.close();
  });

  test('abort discards the upload: status, chunk, complete and abort then NOT_FOUND; nothing listed', async () => {
    const server = await main();
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const data = crypto.randomBytes(2 * CHUNK);
    const uploadId = await startUpload(s, { projectId: p, size: data.length });
    await sendChunks(s, uploadId, data, 0, 1);
    assert.equal((await ok(s, 'document_upload_abort', { uploadId })).success, true);
    assertErrorAck(await emitAck(s, 'document_upload_status', { uploadId }), 'NOT_FOUND');
    assertErrorAck(await sendChunk(s, uploadId, 1, chunkOf(data, 1)), 'NOT_FOUND');
    assertErrorAck(await emitAck(s, 'document_upload_complete', { uploadId }), 'NOT_FOUND');
    assertErrorAck(await emitAck(s, 'document_upload_abort', { uploadId }), 'NOT_FOUND');
    assert.deepEqual(await listDocuments(s, p), []);
    s.close();
  });

  test('bad payloads are INVALID_PAYLOAD: chunks without binary data, a bad index or uploadId; starts without a project, filename or byte count', async () => {
    const server = await main();
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const data = crypto.randomBytes(2 * CHUNK);
    const uploadId = await startUpload(s, { projectId: p, size: data.length });
    const c0 = chunkOf(data, 0);
    for (const payload of [
      { uploadId, index: 0 },
      { uploadId, index: 0, data: null },
      { uploadId, index: 0, data: 'a'.repeat(CHUNK) },
      { uploadId, index: 0, data: [...c0.subarray(0, 16)] },
      { uploadId, index: -1, data: c0 },
      { uploadId, index: 0.5, data: c0 },
      { uploadId, index: '0', data: c0 },
      { uploadId, data: c0 },
      { index: 0, data: c0 },
      { uploadId: null, index: 0, data: c0 },
      { uploadId: 42.5, index: 0, data: c0 },
      c0,
      'x',
      null,
    ]) {
      assertErrorAck(await emitAck(s, 'document_upload_chunk', payload), 'INVALID_PAYLOAD');
    }
    for (const event of ['document_upload_status', 'document_upload_complete', 'document_upload_abort']) {
      assertErrorAck(await emitAck(s, event, {}), 'INVALID_PAYLOAD');
    }
    // none of that touched the upload
    const status = await ok(s, 'document_upload_status', { uploadId });
    assert.deepEqual([status.receivedBytes, status.nextIndex], [0, 0]);

    const good = { projectId: p, filename: 'f.bin', size: 10 };
    for (const payload of [
      { ...good, projectId: undefined },
      { ...good, filename: undefined },
      { ...good, filename: 42 },
      { ...good, size: undefined },
      { ...good, size: -1 },
      { ...good, size: 1.5 },
      { ...good, size: '10' },
      { ...good, sha256: 'abc' },
      { ...good, sha256: 'z'.repeat(64) },
      'x',
      null,
    ]) {
      assertErrorAck(await emitAck(s, 'document_upload_start', payload), 'INVALID_PAYLOAD');
    }
    for (const payload of [{}, { documentId: null }, 'x']) {
      assertErrorAck(await emitAck(s, 'document_stream', payload), 'INVALID_PAYLOAD');
    }
    assertErrorAck(await emitAck(s, 'list_documents', {}), 'INVALID_PAYLOAD');
    assert.equal((await ok(s, 'document_upload_abort', { uploadId })).success, true);
    s.close();
  });
});

describe('abandoned uploads', () => {
  test('an upload that receives nothing for UPLOAD_TTL_MS (800 ms here) is removed; an active one is kept', async () => {
    const server = await start({ UPLOAD_TTL_MS: 800 });
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const data = crypto.randomBytes(3 * CHUNK);
    const idle = await startUpload(s, { projectId: p, size: data.length });
    const active = await startUpload(s, { projectId: p, size: data.length });
    // Keep one upload busy for 2.4 s (three TTLs); the other receives nothing.
    for (let i = 0; i < 3; i++) {
      await delay(600); // chunks spaced by less than the TTL: the upload stays alive
      assert.equal((await sendChunk(s, active, i, chunkOf(data, i))).success, true);
    }
    assertErrorAck(await emitAck(s, 'document_upload_status', { uploadId: idle }), 'NOT_FOUND');
    assertErrorAck(await emitAck(s, 'document_upload_chunk', { uploadId: idle, index: 0, data: chunkOf(data, 0) }), 'NOT_FOUND');
    const doc = await completeUpload(s, active);
    assert.equal(doc.sha256, sha256(data));
    s.close();
  });
});

// Trestle refuses binary data everywhere but in upload chunks (the reference decodes it).
describe('binary data outside upload chunks', () => {
  test('join_room, broadcast_room, new_comment and document_upload_start with a Buffer are INVALID_PAYLOAD; the socket keeps working', async () => {
    const server = await main();
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p], permissions: ['room_broadcast'] });
    const blob = crypto.randomBytes(4096);
    const bystander = await connectAs(server, { userId: uniq('b'), projects: [p] });
    const relayed = record(bystander, 'binary_relay');
    assertErrorAck(await emitAck(s, 'join_room', blob), 'INVALID_PAYLOAD');
    assertErrorAck(await emitAck(s, 'broadcast_room', `project:${p}`, 'binary_relay', blob), 'INVALID_PAYLOAD');
    assertErrorAck(await emitAck(s, 'new_comment', { room: `project:${p}:comments`, content: blob }), 'INVALID_PAYLOAD');
    assertErrorAck(await emitAck(s, 'document_upload_start', { projectId: p, filename: 'f', size: 1, sha256: blob }), 'INVALID_PAYLOAD');
    await flush(server, bystander);
    assert.deepEqual(relayed.events, [], 'nothing was relayed');
    assert.equal((await emitAck(s, 'join_room', `project:${p}:activity`)).success, true);
    s.close();
    bystander.close();
  });
});

// Limits that Trestle adds (MAX_UPLOADS_PER_USER, MAX_STREAMS_PER_SOCKET, both default 3).
// The reference has neither: these tests are expected to FAIL on SERVER=reference.
describe('Trestle limits', () => {
  test('MAX_UPLOADS_PER_USER (3): a 4th open upload of the user (any socket) is RATE_LIMITED; aborting one frees a slot', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s1 = await connectAs(server, { userId: uid, projects: [p] });
    const s2 = await connectAs(server, { userId: uid, projects: [p] });
    const other = await connectAs(server, { userId: uniq('other'), projects: [p] });
    const open = [];
    for (let i = 0; i < 3; i++) open.push(await startUpload(s1, { projectId: p, filename: `f${i}.bin`, size: 1000 }));
    const fourth = { projectId: p, filename: 'f3.bin', size: 1000 };
    assertErrorAck(await emitAck(s2, 'document_upload_start', fourth), 'RATE_LIMITED');
    assertErrorAck(await emitAck(s1, 'document_upload_start', fourth), 'RATE_LIMITED');
    // another user has slots of their own
    await startUpload(other, fourth);
    assert.equal((await ok(s1, 'document_upload_abort', { uploadId: open[0] })).success, true);
    const again = await startUpload(s2, fourth);
    assertErrorAck(await emitAck(s2, 'document_upload_start', fourth), 'RATE_LIMITED');
    for (const uploadId of [...open.slice(1), again]) await ok(s1, 'document_upload_abort', { uploadId });
    for (const s of [s1, s2, other]) s.close();
  });

  test('MAX_STREAMS_PER_SOCKET (3): a 4th open stream on a socket is RATE_LIMITED; re-streaming a document replaces its stream', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const docs = [];
    for (let i = 0; i < 4; i++) docs.push(await uploadDocument(s, { projectId: p, data: crypto.randomBytes(10 * KiB), uploadedBy: uid }));
    const [a, b, c, d] = docs;
    // 10 chunks of 1 KiB each, never acked: every stream stays open
    s.on('document_chunk', () => {});
    for (const doc of [a, b, c]) await ok(s, 'document_stream', { documentId: doc.id, chunkSize: KiB });
    assertErrorAck(await emitAck(s, 'document_stream', { documentId: d.id, chunkSize: KiB }), 'RATE_LIMITED');
    // the limit is per socket
    const s2 = await connectAs(server, { userId: uid, projects: [p] });
    s2.on('document_chunk', () => {});
    await ok(s2, 'document_stream', { documentId: d.id, chunkSize: KiB });
    // a new stream of a document already streaming replaces the old one
    await ok(s, 'document_stream', { documentId: a.id, chunkSize: KiB, offset: 2 * KiB });
    await ok(s, 'document_stream_cancel', { documentId: b.id });
    // open now: a (once), c; a counted twice would refuse d
    await ok(s, 'document_stream', { documentId: d.id, chunkSize: KiB });
    assertErrorAck(await emitAck(s, 'document_stream', { documentId: b.id, chunkSize: KiB }), 'RATE_LIMITED');
    s.close();
    s2.close();
  });

  test('a replaced stream sends nothing more: only the new one runs to document_complete, once', async () => {
    const server = await main();
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, projects: [p] });
    const data = crypto.randomBytes(20 * KiB);
    const doc = await uploadDocument(s, { projectId: p, data, uploadedBy: uid });
    // The old stream starts at chunk 0 and is never acked; the new one starts at chunk 10
    // and is acked, so the two are told apart by chunkIndex.
    const old = [];
    const fresh = [];
    let firstOld;
    const gotOld = new Promise((r) => (firstOld = r));
    s.on('document_chunk', (chunk, ack) => {
      if (chunk.chunkIndex >= 10) {
        fresh.push(toBuf(chunk.data));
        ack();
      } else {
        old.push({ index: chunk.chunkIndex, ack });
        firstOld();
      }
    });
    const completes = record(s, 'document_complete');
    await ok(s, 'document_stream', { documentId: doc.id, chunkSize: KiB });
    await gotOld;
    const done = waitFor(s, 'document_complete', 10_000);
    await ok(s, 'document_stream', { documentId: doc.id, chunkSize: KiB, offset: 10 * KiB });
    await done;
    // acking the old stream's chunks now must not revive it
    const held = old.length;
    for (const { ack } of old) ack();
    await ok(s, 'list_documents', { projectId: p });
    await flush(server, s);
    assert.ok(Buffer.concat(fresh).equals(data.subarray(10 * KiB)), 'the new stream did not deliver chunks 10..19');
    assert.deepEqual(old.map((o) => o.index), [...Array(held).keys()], 'the replaced stream sent more after its chunks were acked');
    assert.ok(held <= 4);
    assert.equal(completes.events.length, 1, 'document_complete count');
    s.close();
  });
});

// Streams were bounded per socket (3) and per stream (the window) only: 97 sockets × 3
// never-acknowledged streams held +164–284 MiB for 30 s. STREAM_BUDGET_BYTES bounds the
// unacknowledged chunk bytes of the whole instance; past it document_stream is RATE_LIMITED.
describe('STREAM_BUDGET_BYTES (8 MiB here)', () => {
  test('readers that never ack get at most the budget in all; a new stream is RATE_LIMITED until acks give room back; RSS grows < 48 MiB', async (t) => {
    const server = await start({ STREAM_BUDGET_BYTES: 8 * MiB });
    const p = uniq('p');
    const uid = uniq('u');
    const uploader = await connectAs(server, { userId: uid, projects: [p] });
    const docs = [];
    for (let i = 0; i < 3; i++) docs.push(await uploadDocument(uploader, { projectId: p, data: crypto.randomBytes(4 * MiB), uploadedBy: uid }));

    // Two readers of 1 MiB chunks, window 4: 8 MiB unacknowledged, the whole budget.
    const held = [];
    const readers = [];
    for (let i = 0; i < 2; i++) {
      const s = await connectAs(server, { userId: uniq('r'), projects: [p] });
      const mine = [];
      held.push(mine);
      s.on('document_chunk', (chunk, ack) => mine.push({ chunk, ack }));
      readers.push(s);
      await ok(s, 'document_stream', { documentId: docs[0].id, chunkSize: MiB });
    }
    await waitUntil(() => held.every((h) => h.length === 4), 10_000);
    const late = await connectAs(server, { userId: uniq('r'), projects: [p] });
    assertErrorAck(await emitAck(late, 'document_stream', { documentId: docs[1].id, chunkSize: MiB }), 'RATE_LIMITED');
    // The first reader acks: its stream ends and gives its 4 MiB back.
    const done = waitFor(readers[0], 'document_complete', 10_000);
    for (const { ack } of held[0]) ack();
    await done;
    const lateChunks = record(late, 'document_chunk');
    await ok(late, 'document_stream', { documentId: docs[1].id, chunkSize: 64 * 1024 });
    await waitUntil(() => lateChunks.events.length >= 4, 10_000);

    // 24 more sockets × 3 streams that never ack: without the budget, 288 MiB in flight.
    const pid = server.proc.pid;
    const baseline = rssBytes(pid);
    let received = 0;
    let refused = 0;
    const crowd = [];
    for (let i = 0; i < 24; i++) {
      const s = await connectAs(server, { userId: uniq('c'), projects: [p] });
      s.on('document_chunk', (chunk) => {
        received += toBuf(chunk.data).length;
      });
      crowd.push(s);
      for (const doc of docs) {
        const ack = await emitAck(s, 'document_stream', { documentId: doc.id, chunkSize: MiB });
        if (ack.success) continue;
        assertErrorAck(ack, 'RATE_LIMITED');
        refused += 1;
      }
    }
    let peak = baseline;
    for (let i = 0; i < 15; i++) {
      await delay(100);
      peak = Math.max(peak, rssBytes(pid));
    }
    await flush(server, ...crowd);
    t.diagnostic(`crowd: ${refused} of 72 streams refused, ${mib(received)} received unacknowledged; server RSS ${mib(baseline)} before, peak ${mib(peak)} (+${mib(peak - baseline)})`);
    assert.ok(refused > 0, 'no stream was refused past the budget');
    // The budget is shared with the 4 chunks of 64 KiB the late reader holds.
    assert.ok(received <= 8 * MiB, `${mib(received)} streamed without acks, over the 8 MiB budget`);
    assert.ok(peak - baseline < 48 * MiB, `RSS grew by ${mib(peak - baseline)}`);
    for (const s of [uploader, ...readers, late, ...crowd]) s.close();
  });
});
