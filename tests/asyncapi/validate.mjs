// Checks fondo-bridge's AsyncAPI documents with the official parser (@asyncapi/parser), and
// messages against the schemas of those documents (ajv). Run by tests/asyncapi.rs; by hand:
//
//   node validate.mjs document DOC.json...              every document parses with no error
//   node validate.mjs messages DOC.json DIR             every line of DIR/*.jsonl (file sink
//                                                       output) matches a message of a channel
//   node validate.mjs samples DOC.json TYPE=FILE...     each body is valid as the payload of TYPE
//
// Prints one JSON summary line on stdout; exits 1 when something does not validate.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const SEVERITY = ['error', 'warning', 'info', 'hint'];

async function parse(file) {
  const { document, diagnostics } = await new Parser().parse(readFileSync(file, 'utf8'));
  const errors = diagnostics.filter((d) => d.severity === 0);
  const warnings = diagnostics.filter((d) => d.severity === 1);
  // Infos and hints only: e.g. that AsyncAPI 3.1 exists (the documents are 3.0 on purpose).
  for (const d of diagnostics.filter((d) => d.severity <= 1)) {
    console.error(`${file}: ${SEVERITY[d.severity]}: ${d.code}: ${d.message} at ${d.path.join('.')}`);
  }
  return { document, errors, warnings, infos: diagnostics.length - errors.length - warnings.length };
}

async function documents(files) {
  let failed = 0;
  let warnings = 0;
  let infos = 0;
  for (const f of files) {
    const r = await parse(f);
    warnings += r.warnings.length;
    infos += r.infos;
    if (!r.document || r.errors.length) failed += 1;
  }
  console.log(JSON.stringify({ documents: files.length, failed, warnings, infos }));
  return failed === 0;
}

// The parsed, dereferenced document, with a compiled validator per channel message.
async function compiled(file) {
  const { document, errors } = await parse(file);
  if (!document || errors.length) throw new Error(`${file} does not parse`);
  const json = document.json();
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  const channels = [];
  for (const [id, ch] of Object.entries(json.channels ?? {})) {
    const pattern = ch.address
      .split(/(\{[^}]+\})/)
      .map((part) => (part.startsWith('{') ? '(.+)' : part.replace(/[.*+?^$()|[\]\\]/g, '\\$&')))
      .join('');
    const messages = Object.values(ch.messages ?? {}).map((m) => ({
      name: m.name,
      payload: ajv.compile(m.payload),
      headers: m.headers ? ajv.compile(m.headers) : () => true,
    }));
    channels.push({ id, address: new RegExp(`^${pattern}$`), messages });
  }
  return channels;
}

function explain(validate) {
  return (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}`).join('; ');
}

// A message is valid on a channel whose address matches its topic, as the message of its event
// type there (or the channel's `other` message for a type without its own, or its dead letter).
function check(channels, topic, type, payload, headers) {
  const problems = [];
  for (const ch of channels.filter((c) => topic === null || c.address.test(topic))) {
    const own = ch.messages.filter((m) => m.name === type);
    for (const m of own.length ? own : ch.messages.filter((m) => m.name === 'other' || m.name === 'deadLetter')) {
      const okPayload = m.payload(payload);
      const okHeaders = headers === null || m.headers(headers);
      if (okPayload && okHeaders) return { ok: true, channel: ch.id };
      problems.push(`${ch.id}/${m.name}: ${okPayload ? 'headers' : 'payload'}: ${explain(okPayload ? m.headers : m.payload)}`);
    }
  }
  return { ok: false, why: problems.length ? problems.join(' | ') : `no channel carries ${type} on ${topic}` };
}

async function messages(docFile, dir) {
  const channels = await compiled(docFile);
  const summary = { messages: 0, failed: 0, files: 0, byType: {}, byChannel: {} };
  const failures = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.jsonl')).sort()) {
    summary.files += 1;
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
      if (!line.trim()) continue;
      const rec = JSON.parse(line);
      const type = rec.headers?.['fondo-event-type'];
      summary.messages += 1;
      if (rec.payload_json === undefined) {
        summary.failed += 1;
        failures.push(`${f}: a line without payload_json`);
        continue;
      }
      const r = check(channels, rec.topic, type, rec.payload_json, rec.headers ?? {});
      if (r.ok) {
        summary.byType[type] = (summary.byType[type] ?? 0) + 1;
        summary.byChannel[r.channel] = (summary.byChannel[r.channel] ?? 0) + 1;
      } else {
        summary.failed += 1;
        failures.push(`${f}: ${type} on ${rec.topic}: ${r.why}`);
      }
    }
  }
  failures.slice(0, 20).forEach((x) => console.error(x));
  console.log(JSON.stringify(summary));
  return summary.failed === 0 && summary.messages > 0;
}

async function samples(docFile, pairs) {
  const channels = await compiled(docFile);
  let failed = 0;
  for (const pair of pairs) {
    const [type, file] = pair.split(/=(.*)/s);
    const r = check(channels, null, type, JSON.parse(readFileSync(file, 'utf8')), null);
    if (!r.ok) {
      failed += 1;
      console.error(`${file} as ${type}: ${r.why}`);
    }
  }
  console.log(JSON.stringify({ samples: pairs.length, failed }));
  return failed === 0;
}

const [mode, ...args] = process.argv.slice(2);
const run = { document: () => documents(args), messages: () => messages(args[0], args[1]), samples: () => samples(args[0], args.slice(1)) }[mode];
if (!run) {
  console.error('usage: validate.mjs document DOC... | messages DOC DIR | samples DOC TYPE=FILE...');
  process.exit(2);
}
process.exit((await run()) ? 0 : 1);
