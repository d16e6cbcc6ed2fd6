#!/usr/bin/env node
// Verifies a Chorus ledger export's hash chain and Ed25519 signatures, written from
// docs/audit.md alone with node:crypto (no npm packages, no Python).
//
//   node verify-ledger.js ledger.jsonl --public-key trusted.pem [--expect-head SEQ:HASH]
//
// Exit status: 0 verified, 1 violation found, 2 unreadable file or key, or bad arguments.
// It checks the format, the chain and the signatures; the privacy rules (epsilon, budgets,
// k, retention) are `chorus audit verify`'s job.
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');

const HEX64 = /^[0-9a-f]{64}$/;
const HEX128 = /^[0-9a-f]{128}$/;
const BODY_KEYS = 'kind,payload,prev_hash,seq,time';
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

// RFC 8785 (JCS): keys sorted by UTF-16 code units (JavaScript's default sort), no whitespace,
// numbers and strings exactly as JSON.stringify writes them.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

// The entry a line holds, or a string saying what is wrong with it.
function parseLine(text) {
  let line;
  let body;
  try { line = JSON.parse(text); } catch (e) { return `not JSON: ${e.message}`; }
  if (line === null || typeof line !== 'object' || Array.isArray(line)) return 'not a JSON object';
  if (Object.keys(line).sort().join(',') !== 'body,hash,signature') return 'fields must be body, hash, signature';
  if (typeof line.body !== 'string') return 'body must be a string';
  if (typeof line.hash !== 'string' || !HEX64.test(line.hash)) return 'hash must be 64 lowercase hex digits';
  if (typeof line.signature !== 'string' || !HEX128.test(line.signature)) return 'signature must be 128 lowercase hex digits';
  try { body = JSON.parse(line.body); } catch (e) { return `body is not JSON: ${e.message}`; }
  if (body === null || typeof body !== 'object' || Object.keys(body).sort().join(',') !== BODY_KEYS) {
    return `body must be an object with the keys ${BODY_KEYS}`;
  }
  if (canonical(body) !== line.body) return 'body is not in RFC 8785 canonical form';
  if (!Number.isSafeInteger(body.seq) || body.seq < 1) return 'body.seq must be an integer >= 1';
  if (typeof body.prev_hash !== 'string' || !HEX64.test(body.prev_hash)) return 'body.prev_hash must be 64 hex digits';
  if (typeof body.kind !== 'string' || typeof body.payload !== 'object' || body.payload === null
      || Array.isArray(body.payload)) {
    return 'body.kind must be a string and body.payload an object';
  }
  if (typeof body.time !== 'string' || !TIME.test(body.time)) return 'body.time must be YYYY-MM-DDTHH:MM:SS.ffffffZ';
  return { ...body, text: line.body, hash: line.hash, signature: line.signature };
}

function verify(lines, key, expect) {
  const violations = [];
  let prevSeq = 0;
  let prevHash = '0'.repeat(64);
  let head = null;
  let count = 0;
  let pinned = null;
  lines.forEach((text, index) => {
    if (!text.trim()) return;
    const entry = parseLine(text);
    const flag = (rule, message) => violations.push(
      `entry ${typeof entry === 'string' ? '?' : entry.seq} (line ${index + 1}) [${rule}] ${message}`);
    if (typeof entry === 'string') { flag('format', entry); return; }
    count += 1;
    if (entry.seq !== prevSeq + 1) flag('seq', `sequence number ${entry.seq} out of order: expected ${prevSeq + 1}`);
    if (entry.prev_hash !== prevHash) flag('chain', `prev_hash ${entry.prev_hash.slice(0, 16)}... is not the previous entry's hash`);
    const digest = crypto.createHash('sha256').update(Buffer.from(entry.text, 'utf8')).digest('hex');
    if (digest !== entry.hash) flag('hash', `stated hash ${entry.hash.slice(0, 16)}... differs from the recomputed ${digest.slice(0, 16)}...`);
    if (!crypto.verify(null, Buffer.from(entry.hash, 'hex'), key, Buffer.from(entry.signature, 'hex'))) {
      flag('signature', 'Ed25519 signature does not verify with the given public key');
    }
    if (expect && entry.seq === expect.seq && pinned === null) pinned = { line: index + 1, hash: entry.hash };
    [prevSeq, prevHash, head] = [entry.seq, entry.hash, `${entry.seq}:${entry.hash}`];
  });
  if (expect && pinned === null) violations.push(`entry ${expect.seq} (end of file) [expect_head] pinned head is missing: the tail was truncated`);
  if (expect && pinned !== null && pinned.hash !== expect.hash) {
    violations.push(`entry ${expect.seq} (line ${pinned.line}) [expect_head] hash is not the pinned one: history was rewritten`);
  }
  return { violations, head, count };
}

function main(argv) {
  const args = { files: [] };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--public-key' || argv[i] === '--expect-head') args[argv[i]] = argv[(i += 1)];
    else args.files.push(argv[i]);
  }
  const usage = 'usage: verify-ledger.js LEDGER.jsonl --public-key KEY.pem [--expect-head SEQ:HASH]';
  if (args.files.length !== 1 || !args['--public-key']) return fail(usage);
  let expect = null;
  if (args['--expect-head'] !== undefined) {
    const m = /^(\d+):([0-9a-f]{64})$/.exec(args['--expect-head']);
    if (!m || Number(m[1]) < 1) return fail(`--expect-head ${args['--expect-head']}: must be SEQ:HASH, SEQ >= 1`);
    expect = { seq: Number(m[1]), hash: m[2] };
  }
  let key;
  let text;
  try {
    key = crypto.createPublicKey(fs.readFileSync(args['--public-key']));
    text = fs.readFileSync(args.files[0], 'utf8');
  } catch (e) { return fail(e.message); }
  if (key.asymmetricKeyType !== 'ed25519') return fail(`public key is ${key.asymmetricKeyType}, not ed25519`);
  const { violations, head, count } = verify(text.split('\n'), key, expect);
  if (violations.length) {
    console.log(`FAILED: ${violations.length} violation(s)\n  ${violations.join('\n  ')}`);
    return 1;
  }
  console.log(`OK: ${count} entries, chain and signatures verified; head ${head || 'none (empty ledger)'}`);
  return 0;
}

function fail(message) {
  console.error(message);
  return 2;
}

process.exitCode = main(process.argv.slice(2));
