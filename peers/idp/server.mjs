// Test-only OpenID Connect provider for flask-mailoauth's end-to-end tests (npm oidc-provider).
//
// One file, two shapes (IDP_SHAPE):
//   generic    issuer https://127.0.0.1:PORT, standard oidc-provider routes.
//   microsoft  issuer https://127.0.0.1:PORT/{tid}/v2.0, routes /{tenant}/oauth2/v2.0/authorize|token,
//              /{tenant}/discovery/v2.0/keys, Microsoft-like token responses (no email claim in
//              the id_token, scope without offline_access, rotated refresh tokens) and AADSTS errors.
// Both: devInteractions login/consent pages, refresh tokens always issued, open dynamic client
// registration (client metadata `rotate_refresh_token` picks rotation per client), introspection
// with the `email` claim (for Dovecot), revocation, short-lived access tokens for accounts whose id
// starts with "expiring", and test instrumentation under /_test/ (see handleTestRoute).
//
// Environment: IDP_PORT, IDP_SHAPE, IDP_TENANT_ID, IDP_EXPIRING_TTL (seconds, default 2),
// IDP_INTROSPECTION_CLIENT_ID / _SECRET, PEERS_NODE_DIR (where node_modules lives),
// IDP_TLS_CERT / IDP_TLS_KEY (PEM files: it serves https only, as real IdPs do; peers/tls.py).
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as https from 'node:https';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as querystring from 'node:querystring';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.PEERS_NODE_DIR || path.resolve(here, '../../../.peers/node');
// node_modules lives outside tests/, and ES modules ignore NODE_PATH: resolve by hand.
const entry = createRequire(path.join(nodeDir, 'package.json')).resolve('oidc-provider');
const { default: Provider, errors } = await import(pathToFileURL(entry).href);
// oidc-provider's quick-start in-memory store keeps about 1000 entries (each grant takes ~8):
// a session making a few hundred grants (`refresh --due` over 200 accounts) would silently
// evict older grants and registered clients. The same adapter, on a store that does not.
const lib = (...parts) => pathToFileURL(path.join(path.dirname(entry), ...parts)).href;
const { default: MemoryAdapter } = await import(lib('adapters', 'memory_adapter.js'));
const { default: LRU } = await import(lib('helpers', 'lru.js'));
const store = new LRU({ maxSize: 10_000_000 });

const port = Number(process.env.IDP_PORT || 0);
const shape = process.env.IDP_SHAPE || 'generic';
const microsoft = shape === 'microsoft';
const tid = process.env.IDP_TENANT_ID || '9188040d-6c67-4c5b-b112-36a304b66dad';
const expiringTtl = Number(process.env.IDP_EXPIRING_TTL || 2);
const introspector = {
  client_id: process.env.IDP_INTROSPECTION_CLIENT_ID || 'dovecot',
  client_secret: process.env.IDP_INTROSPECTION_CLIENT_SECRET || 'dovecot-secret',
};
const tls = { cert: readFileSync(process.env.IDP_TLS_CERT), key: readFileSync(process.env.IDP_TLS_KEY) };
const base = `https://127.0.0.1:${port}`;
const issuer = microsoft ? `${base}/${tid}/v2.0` : base;
const OUTLOOK = 'https://outlook.office.com/';
const outlookScopes = ['IMAP.AccessAsUser.All', 'POP.AccessAsUser.All', 'SMTP.Send'].map((s) => OUTLOOK + s);
const oidcScopes = new Set(['openid', 'profile', 'email', 'offline_access']);
const msRoutes = {
  authorization: '/common/oauth2/v2.0/authorize',
  token: '/common/oauth2/v2.0/token',
  jwks: '/common/discovery/v2.0/keys',
  end_session: '/common/oauth2/v2.0/logout',
};
const tokenPath = microsoft ? msRoutes.token : '/token';
const authPath = microsoft ? msRoutes.authorization : '/auth';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });

const provider = new Provider(issuer, {
  adapter: (model) => new MemoryAdapter(model, store),
  clients: [{ ...introspector, grant_types: [], response_types: [], redirect_uris: [] }],
  jwks: { keys: [privateKey.export({ format: 'jwk' })] },
  cookies: {
    keys: [randomUUID()],
    // Cookies ignore ports: give the second shape its own names so both IdPs work in one browser.
    names: microsoft
      ? { session: '_ms_session', interaction: '_ms_interaction', resume: '_ms_interaction_resume' }
      : { session: '_session', interaction: '_interaction', resume: '_interaction_resume' },
  },
  routes: microsoft ? msRoutes : {},
  scopes: ['openid', 'offline_access', 'email', 'profile', 'mail', ...outlookScopes],
  claims: microsoft
    ? { openid: ['sub', 'oid', 'tid'], email: [], profile: ['preferred_username', 'name'] }
    : { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username'] },
  conformIdTokenClaims: false, // profile/email claims go into the id_token, like Microsoft and Google
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    registration: { enabled: true }, // open: tests register clients with their own redirect URIs
    // RFC 7592: a test changes a client's registered keys (a certificate rollover)
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: false },
  },
  extraClientMetadata: {
    properties: ['rotate_refresh_token'],
    validator(ctx, key, value) {
      if (key === 'rotate_refresh_token' && value !== undefined && typeof value !== 'boolean') {
        throw new errors.InvalidClientMetadata('rotate_refresh_token must be a boolean');
      }
    },
  },
  ttl: {
    AccessToken: (ctx, token) => (token.accountId?.startsWith('expiring') ? expiringTtl : 3600),
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
    Interaction: 3600,
  },
  expiresWithSession: async () => false,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'), // Microsoft-like
  rotateRefreshToken: (ctx) => {
    const setting = ctx.oidc.entities.Client?.rotate_refresh_token;
    return setting === undefined ? microsoft : setting; // Microsoft rotates, Google does not
  },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    // Microsoft's id_token carries no email claim (an optional claim most tenants never add):
    // the sign-in name is preferred_username.
    claims: async () => ({
      sub,
      ...(microsoft ? {} : { email: sub, email_verified: true }),
      preferred_username: sub,
      name: `Test ${sub.split('@')[0]}`,
      ...(microsoft ? { oid: `00000000-0000-0000-0000-${Buffer.from(sub).toString('hex').slice(-12).padStart(12, '0')}`, tid } : {}),
    }),
  }),
  extraTokenClaims: async (ctx, token) => (token.kind === 'AccessToken' ? { email: token.accountId } : undefined),
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>IdP error</title><pre id="error">${JSON.stringify(out)}</pre>`;
  },
});
provider.proxy = false;

// ---------------------------------------------------------------- test instrumentation
// `forms`: grant_type and scope of each token request whose body was read (Microsoft shape, or a
// failure pending), as the client sent them: what a test would otherwise read on the wire.
const stats = { token: {}, total: 0, injected: 0, statuses: {}, forms: [] };
let failures = []; // queue of { count, status, body, retry_after, grant_type }

function resetStats() {
  stats.token = {};
  stats.total = 0;
  stats.injected = 0;
  stats.statuses = {};
  stats.forms = [];
}

async function readRaw(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

async function handleTestRoute(ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  if (route === 'GET /_test/stats') {
    ctx.body = { ...stats, pending_failures: failures.reduce((n, f) => n + f.count, 0) };
  } else if (route === 'POST /_test/reset') {
    resetStats();
    failures = [];
    ctx.body = { ok: true };
  } else if (route === 'POST /_test/fail_next') {
    // {"count": N, "status": 503, "body": {...} | "text", "retry_after": "3", "grant_type": "refresh_token"}
    const raw = await readRaw(ctx.req);
    const rule = { count: 1, status: 503, body: undefined, retry_after: undefined, grant_type: undefined, ...JSON.parse(raw || '{}') };
    failures.push(rule);
    ctx.body = { ok: true, queued: rule };
  } else if (route === 'GET /_test/info') {
    ctx.body = { shape, issuer, tenant_id: tid, expiring_ttl: expiringTtl, introspector: introspector.client_id };
  } else {
    ctx.status = 404;
    ctx.body = { error: 'no such test route' };
  }
}

function count(grantType, status) {
  const key = grantType || 'unknown';
  stats.token[key] = (stats.token[key] || 0) + 1;
  stats.total += 1;
  stats.statuses[status] = (stats.statuses[status] || 0) + 1;
}

// ---------------------------------------------------------------- Microsoft shape
const aadErrors = {
  invalid_grant: {
    refresh_token: [700082, 'AADSTS700082: The refresh token has expired due to inactivity. The token was issued on 2024-01-01T00:00:00.0000000Z and was inactive for 90.00:00:00.'],
    default: [70008, 'AADSTS70008: The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.'],
  },
  invalid_client: { default: [7000215, 'AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.'] },
  invalid_scope: { default: [70011, 'AADSTS70011: The provided request must include a \'scope\' input parameter. The provided value for the input parameter \'scope\' is not valid.'] },
  unauthorized_client: { default: [700016, 'AADSTS700016: Application was not found in the directory.'] },
  invalid_request: { default: [900144, 'AADSTS900144: The request body must contain the following parameter.'] },
  unsupported_grant_type: { default: [70003, 'AADSTS70003: The app requested an unsupported grant type.'] },
};

function microsoftTokenResponse(ctx, grantType) {
  const body = ctx.body;
  if (!body || typeof body !== 'object') return;
  if (ctx.status === 200 && typeof body.scope === 'string') {
    // Microsoft lists only the resource scopes it granted: no offline_access, no OIDC scopes.
    body.scope = body.scope.split(' ').filter((s) => s && !oidcScopes.has(s)).join(' ');
    body.ext_expires_in = body.expires_in;
  } else if (body.error && aadErrors[body.error]) {
    const table = aadErrors[body.error];
    const [code, text] = table[grantType] || table.default;
    const trace = randomUUID();
    const correlation = randomUUID();
    const now = new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
    ctx.body = {
      error: body.error,
      error_description: `${text} Trace ID: ${trace} Correlation ID: ${correlation} Timestamp: ${now}`,
      error_codes: [code],
      timestamp: now,
      trace_id: trace,
      correlation_id: correlation,
      error_uri: `${base}/error?code=${code}`,
    };
  }
}

const knownTenants = new Set(['common', 'organizations', 'consumers', tid]);

function rewriteMicrosoftPath(ctx) {
  let m = ctx.path.match(/^\/([^/]+)\/oauth2\/v2\.0\/(authorize|token|logout)(\/.*)?$/);
  if (m && m[1] !== 'common') {
    if (!knownTenants.has(m[1])) return false;
    ctx.path = `/common/oauth2/v2.0/${m[2]}${m[3] || ''}`;
    return true;
  }
  m = ctx.path.match(/^\/([^/]+)\/discovery\/v2\.0\/keys$/);
  if (m && m[1] !== 'common') {
    if (!knownTenants.has(m[1])) return false;
    ctx.path = msRoutes.jwks;
    return true;
  }
  m = ctx.path.match(/^\/([^/]+)\/v2\.0\/\.well-known\/openid-configuration$/);
  if (m) {
    if (!knownTenants.has(m[1])) return false;
    ctx.path = '/.well-known/openid-configuration';
  }
  return true;
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/_test/')) {
    await handleTestRoute(ctx);
    return;
  }
  if (microsoft && !rewriteMicrosoftPath(ctx)) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: 'AADSTS90002: Tenant not found.', error_codes: [90002] };
    return;
  }
  if (ctx.path === authPath && typeof ctx.query.prompt === 'string' && ctx.query.prompt.includes('select_account')) {
    // Microsoft and Google know prompt=select_account; oidc-provider does not: show the login page.
    const prompts = new Set(ctx.query.prompt.split(' ').map((p) => (p === 'select_account' ? 'login' : p)));
    ctx.query = { ...ctx.query, prompt: [...prompts].join(' ') };
  }
  const isToken = ctx.path === tokenPath && ctx.method === 'POST';
  let form;
  if (isToken && (failures.length || microsoft)) {
    // The body is read here (grant type, scope); oidc-provider then falls back to ctx.req.body.
    const raw = await readRaw(ctx.req);
    ctx.req.body = raw;
    form = querystring.parse(raw);
    stats.forms.push({ grant_type: form.grant_type, scope: form.scope });
    if (microsoft && form.grant_type === 'refresh_token' && typeof form.scope === 'string') {
      // Microsoft accepts the reserved scopes on a refresh (MSAL always sends offline_access
      // openid profile); oidc-provider refuses offline_access, which its refresh tokens lack.
      const scope = form.scope.split(' ').filter((s) => s && s !== 'offline_access').join(' ');
      ctx.req.body = querystring.stringify({ ...form, scope });
    }
  }
  if (isToken && failures.length) {
    const grantType = form.grant_type;
    const idx = failures.findIndex((f) => !f.grant_type || f.grant_type === grantType);
    if (idx !== -1) {
      const rule = failures[idx];
      rule.count -= 1;
      if (rule.count <= 0) failures.splice(idx, 1);
      ctx.status = rule.status;
      if (rule.retry_after !== undefined && rule.retry_after !== null) ctx.set('Retry-After', String(rule.retry_after));
      ctx.set('Cache-Control', 'no-store');
      ctx.body = rule.body === undefined ? { error: 'temporarily_unavailable', error_description: 'injected by test' } : rule.body;
      stats.injected += 1;
      count(grantType, ctx.status);
      return;
    }
  }
  await next();
  if (isToken) {
    const grantType = ctx.oidc?.params?.grant_type;
    if (microsoft) microsoftTokenResponse(ctx, grantType);
    count(grantType, ctx.status);
  }
});

const server = https.createServer(tls, provider.callback()).listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider (${shape}) listening on ${base}, issuer ${issuer}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
export default server;
