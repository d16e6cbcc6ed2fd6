#!/usr/bin/env node
// A chorus.v1 client written from the .proto files and docs/api.md alone, with @grpc/grpc-js.
//
// It reports a batch (and shows the batch-id rules), closes the window, releases statistics
// and checks that the estimates' charges add up and derived ones name their releases, decodes
// the structured error details (ErrorInfo, BadRequest, QuotaFailure) of refused requests,
// streams the signed ledger, and hands it to a ledger verifier given by path.
//
//   CHORUS_ADDRESS=127.0.0.1:7355 CHORUS_INGEST_TOKEN=... CHORUS_ADMIN_TOKEN=... \
//   CHORUS_ANALYST_TOKEN=... CHORUS_AUDITOR_TOKEN=... CHORUS_USER=user-team-red-0 \
//   CHORUS_METRIC=ai.tokens [CHORUS_VERIFIER=verify-ledger.js] node client.js
//
// The verifier is run as `node <CHORUS_VERIFIER> <ledger.jsonl> --public-key <key.pem>` and must
// exit 0; the ledger file holds one LedgerEntry per line as JSON (proto field names).
// Prints one JSON summary line; exits non-zero on the first expectation that fails.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = process.env.CHORUS_PROTO_ROOT || path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync(
  ['chorus/v1/ingest.proto', 'chorus/v1/release.proto', 'chorus/v1/admin.proto', 'chorus/v1/audit.proto'],
  { includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true });
const v1 = grpc.loadPackageDefinition(definition).chorus.v1;

// The google.rpc messages of AIP-193 error details (from googleapis google/rpc/*.proto).
const rpc = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
  message RetryInfo { Duration retry_delay = 1; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; string reason = 3; }
    repeated FieldViolation field_violations = 1;
  }
  message QuotaFailure {
    message Violation {
      string subject = 1; string description = 2; string api_service = 3; string quota_metric = 4;
      string quota_id = 5; map<string, string> quota_dimensions = 6; int64 quota_value = 7;
    }
    repeated Violation violations = 1;
  }`, { keepCase: true }).root;

/** The google.rpc details of a failed call, by short type name (ErrorInfo, BadRequest, ...). */
function details(error) {
  const [raw] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  assert.ok(raw, `${error.code} ${error.details}: no google.rpc.Status in the trailers`);
  const status = rpc.lookupType('google.rpc.Status').decode(raw);
  const out = {};
  for (const any of status.details) {
    const name = any.type_url.split('/').pop();
    const type = rpc.lookupType(name);
    out[name.replace('google.rpc.', '')] = type.toObject(type.decode(any.value), { longs: String });
  }
  assert.ok(out.ErrorInfo && out.ErrorInfo.domain === 'chorus.dev', 'every error carries an ErrorInfo');
  return out;
}

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
}

const address = env('CHORUS_ADDRESS');
const bearer = (token) => {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
};
const credentials = grpc.credentials.createInsecure();
const ingest = new v1.IngestService(address, credentials);
const admin = new v1.AdminService(address, credentials);
const release = new v1.ReleaseService(address, credentials);
const audit = new v1.AuditService(address, credentials);

function unary(client, method, request, token) {
  return new Promise((resolve, reject) => {
    client[method](request, bearer(token), { deadline: Date.now() + 30000 },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function refused(promise, code) {
  try {
    await promise;
  } catch (err) {
    assert.equal(err.code, code, `${err.code}: ${err.details}`);
    return details(err);
  }
  throw new Error(`expected status ${code}, the call succeeded`);
}

const timestamp = (date) => ({ seconds: String(Math.floor(date / 1000)), nanos: (date % 1000) * 1e6 });
const micros = (decimal) => {  // an exact epsilon decimal string -> integer micro-epsilon
  const [whole, fraction = ''] = decimal.split('.');
  return BigInt(whole) * 1000000n + BigInt(fraction.padEnd(6, '0'));
};

async function main() {
  const tokens = {
    ingest: env('CHORUS_INGEST_TOKEN'), admin: env('CHORUS_ADMIN_TOKEN'),
    analyst: env('CHORUS_ANALYST_TOKEN'), auditor: env('CHORUS_AUDITOR_TOKEN'),
  };
  const user = env('CHORUS_USER');
  const metric = env('CHORUS_METRIC');
  const summary = {};

  // Ingest: a random 128-bit batch id; a resend is a duplicate; other contents under it are refused.
  const batch = {
    batch_id: crypto.randomBytes(16).toString('hex'), source: 'node-example', source_version: '1',
    contributions: [{ user, metric, value: '42', event_time: timestamp(Date.now()) }],
  };
  const first = await unary(ingest, 'Report', batch, tokens.ingest);
  assert.equal(first.accepted, 1);
  assert.equal((await unary(ingest, 'Report', batch, tokens.ingest)).duplicate, true);
  const reused = await refused(unary(ingest, 'Report',
    { ...batch, contributions: [{ ...batch.contributions[0], value: '43' }] }, tokens.ingest),
  grpc.status.ALREADY_EXISTS);
  assert.equal(reused.ErrorInfo.reason, 'BATCH_ID_REUSED');

  const noTime = await refused(unary(ingest, 'Report', {
    batch_id: crypto.randomBytes(16).toString('hex'), contributions: [{ user, metric, value: '1' }],
  }, tokens.ingest), grpc.status.INVALID_ARGUMENT);
  assert.deepEqual(noTime.BadRequest.field_violations.map((v) => v.field), ['contributions[0].event_time']);
  summary.bad_request = noTime.BadRequest.field_violations[0];

  // Close the window now (admin), then release from it (analyst).
  const windows = await unary(admin, 'ListWindows', { page_size: 10 }, tokens.admin);
  const open = windows.windows.find((w) => w.state === 'WINDOW_STATE_OPEN');
  assert.ok(open, 'the report opened a window');
  await unary(admin, 'CloseWindow', { window: open.id }, tokens.admin);
  const teams = await unary(release, 'ListTeams', { window: open.id }, tokens.analyst);
  const team = teams.teams.find((t) => t.eligible).name;

  const reply = await unary(release, 'Release', {
    window: open.id, teams: [team], metrics: [metric],
    statistics: [{ statistic: 'STATISTIC_MEAN', epsilon: '0.1' }, { statistic: 'STATISTIC_ADOPTION', epsilon: '0.1' }],
  }, tokens.analyst);
  const answer = reply.teams[0];
  const charged = answer.estimates.reduce((sum, e) => sum + micros(e.epsilon_charged), 0n);
  assert.equal(charged, micros(answer.epsilon_charged), 'estimates add up to the team charge');
  const byId = new Map(answer.estimates.filter((e) => e.release_id).map((e) => [e.release_id, e]));
  for (const e of answer.estimates.filter((x) => x.derived_from.length)) {
    assert.equal(e.epsilon_charged, '0');
    for (const id of e.derived_from) assert.ok(byId.has(id), `${e.statistic} names release ${id}`);
  }
  summary.release = answer.estimates.map((e) => [e.statistic, e.epsilon_charged, e.derived_from.length]);

  // Overspend: the whole cap again for another statistic -> QuotaFailure per team-window.
  const over = await refused(unary(release, 'Release', {
    window: open.id, teams: [team], metrics: [metric],
    statistics: [{ statistic: 'STATISTIC_HISTOGRAM', epsilon: answer.budget_cap }],
  }, tokens.analyst), grpc.status.RESOURCE_EXHAUSTED);
  assert.equal(over.ErrorInfo.reason, 'PRIVACY_BUDGET_EXCEEDED');
  const [violation] = over.QuotaFailure.violations;
  assert.equal(violation.subject, `teams/${encodeURIComponent(team)}/windows/${open.id}`);
  assert.equal(violation.quota_dimensions.requested_epsilon, answer.budget_cap);
  assert.equal(violation.quota_dimensions.remaining_epsilon, answer.budget_remaining);
  summary.quota_failure = violation.quota_dimensions;

  // The ledger: stream its pages, hand the entries to the verifier.
  const entries = await new Promise((resolve, reject) => {
    const out = [];
    const call = audit.StreamLedger({ page_size: 500 }, bearer(tokens.auditor));
    call.on('data', (page) => out.push(...page.entries));
    call.on('error', reject);
    call.on('end', () => resolve(out));
  });
  const key = await unary(audit, 'GetPublicKey', {}, tokens.auditor);
  summary.ledger_entries = entries.length;
  if (process.env.CHORUS_VERIFIER) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chorus-ledger-'));
    fs.writeFileSync(path.join(dir, 'ledger.jsonl'), entries.map((e) => JSON.stringify({ body: e.body, hash: e.hash, signature: e.signature })).join('\n') + '\n');
    fs.writeFileSync(path.join(dir, 'key.pem'), key.public_key_pem);
    execFileSync(process.execPath, [path.resolve(process.env.CHORUS_VERIFIER), path.join(dir, 'ledger.jsonl'),
      '--public-key', path.join(dir, 'key.pem')], { stdio: ['ignore', 'ignore', 'inherit'] });
    summary.verified = true;
  }
  console.log(JSON.stringify(summary));
}

main().then(() => process.exit(0), (err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
