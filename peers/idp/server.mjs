// Test-only OpenID Connect provider for flask-mailoauth's end-to-end tests (npm oidc-provider).
//
// One file, three shapes (IDP_SHAPE):
//   generic    issuer https://127.0.0.1:PORT, standard oidc-provider routes.
//   google     issuer https://127.0.0.1:PORT, Google's routes (/o/oauth2/v2/auth, /token, /revoke,
//              /oauth2/v3/certs, /v1/userinfo), the scope https://mail.google.com/, refresh tokens
//              only for access_type=offline with prompt=consent, never rotated, and token answers
//              whose scope leaves out offline_access, as Google's do.
//   microsoft  issuer https://127.0.0.1:PORT/{tid}/v2.0, routes /{tenant}/oauth2/v2.0/authorize|token,
//              /{tenant}/discovery/v2.0/keys, Microsoft-like token responses (no email claim in
//              the id_token, scope without offline_access, rotated refresh tokens) and AADSTS errors.
//              Application (app-only) access as Exchange Online sees it: the client_credentials
//              grant for `https://outlook.office365.com/.default` issues a JWT whose `roles` are the
//              application permissions the test granted the client, `/{tenant}/adminconsent`
//              answers like Microsoft's admin consent endpoint, and introspection vouches for an
//              application token only for the mailbox the test granted it (see appIntrospection).
// All: Google-like service accounts (RFC 7523 JWT-bearer grant, see serviceAccountGrant): a test
//   registers a service account's public key and its domain-wide delegation; an assertion signed
//   with the key obtains an access token for its `sub` (the mailbox), as at Google.
// All: devInteractions login/consent pages, refresh tokens always issued, open dynamic client
// registration (client metadata `rotate_refresh_token` picks rotation per client), introspection
// with the `email` claim (for Dovecot), revocation, short-lived access tokens for accounts whose id
// starts with "expiring", a resource server's who-am-I endpoint at /api/me (resourceMe), and
// test instrumentation under /_test/ (see handleTestRoute).
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
const google = shape === 'google';
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
// Exchange Online, as an application (client_credentials) token's resource and scope.
const EXCHANGE = 'https://outlook.office365.com/';
const EXCHANGE_DEFAULT = `${EXCHANGE}.default`;
const APP_ROLES = ['IMAP.AccessAsApp', 'POP.AccessAsApp', 'SMTP.SendAsApp'];
// client_id -> roles (the app registration's consented application permissions; all by default),
// client_id -> mailbox (Add-MailboxPermission), client_id -> consents recorded by /adminconsent.
const appRoles = new Map();
const appMailboxes = new Map();
const consents = [];
const msRoutes = {
  authorization: '/common/oauth2/v2.0/authorize',
  token: '/common/oauth2/v2.0/token',
  jwks: '/common/discovery/v2.0/keys',
  end_session: '/common/oauth2/v2.0/logout',
};
const GMAIL = 'https://mail.google.com/';
const googleRoutes = {
  authorization: '/o/oauth2/v2/auth',
  token: '/token',
  revocation: '/revoke',
  jwks: '/oauth2/v3/certs',
  userinfo: '/v1/userinfo',
};
const routes = microsoft ? msRoutes : google ? googleRoutes : {};
const tokenPath = routes.token || '/token';
const authPath = routes.authorization || '/auth';

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
      : google
        ? { session: '_g_session', interaction: '_g_interaction', resume: '_g_interaction_resume' }
        : { session: '_session', interaction: '_interaction', resume: '_interaction_resume' },
  },
  routes,
  scopes: ['openid', 'offline_access', 'email', 'profile', 'mail', GMAIL, ...outlookScopes, ...(microsoft ? [EXCHANGE_DEFAULT] : [])],
  claims: microsoft
    ? { openid: ['sub', 'oid', 'tid'], email: [], profile: ['preferred_username', 'name'] }
    : { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username'] },
  conformIdTokenClaims: false, // profile/email claims go into the id_token, like Microsoft and Google
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    registration: { enabled: true }, // open: tests register clients with their own redirect URIs
    clientCredentials: { enabled: microsoft },
    resourceIndicators: {
      enabled: true,
      // Microsoft names the resource in the scope (`{resource}/.default`), never in `resource`.
      defaultResource: async (ctx, client, oneOf) => {
        if (oneOf) return oneOf;
        const scope = ctx.oidc.params?.scope;
        return microsoft && ctx.oidc.params?.grant_type === 'client_credentials' && scope === EXCHANGE_DEFAULT
          ? EXCHANGE
          : undefined;
      },
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (!microsoft || resourceIndicator !== EXCHANGE) throw new errors.InvalidTarget();
        return { scope: EXCHANGE_DEFAULT, audience: EXCHANGE.slice(0, -1), accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
      },
    },
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
    ClientCredentials: 3600,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
    Interaction: 3600,
  },
  expiresWithSession: async () => false,
  // Microsoft-like: always. Google: only for offline access (see the authorization rewrite below).
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && (!google || code.scopes.has('offline_access')),
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
  extraTokenClaims: async (ctx, token) => {
    if (token.kind === 'AccessToken') return { email: token.accountId };
    if (token.kind === 'ClientCredentials') {
      // Microsoft's app-only token: the tenant, the app id, its service principal and roles.
      const roles = appRoles.get(token.clientId) ?? APP_ROLES;
      return { tid, appid: token.clientId, oid: servicePrincipal(token.clientId), ...(roles.length ? { roles } : {}) };
    }
    return undefined;
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>IdP error</title><pre id="error">${JSON.stringify(out)}</pre>`;
  },
});
provider.proxy = false;

function servicePrincipal(clientId) {
  // The enterprise application's object id: stable per client, distinct from the client id.
  const hex = Buffer.from(`sp:${clientId}`).toString('hex').padEnd(32, '0').slice(-32);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

// client_email -> { clientId, publicKey, scopes }: service accounts and the scopes the Workspace
// admin delegated to them (Manage Domain Wide Delegation); none until a test registers one.
const serviceAccounts = new Map();
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

// Google's token endpoint for a service account: no client authentication, the signed assertion
// is the proof (iss = the service account, aud = the token endpoint, sub = the mailbox, scope).
// Answers as Google does: invalid_grant for a bad assertion, unauthorized_client without
// domain-wide delegation of the scope. The token is a real oidc-provider access token of the
// service account's client for the account `sub`, so introspection (Dovecot) names the mailbox.
async function serviceAccountGrant(ctx, form) {
  const refuse = (status, error, description) => {
    ctx.status = status;
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { error, error_description: description };
  };
  const parts = typeof form.assertion === 'string' ? form.assertion.split('.') : [];
  let claims;
  try {
    claims = JSON.parse(Buffer.from(parts[1] || '', 'base64url').toString());
  } catch {
    return refuse(400, 'invalid_grant', 'Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.');
  }
  const account = claims && serviceAccounts.get(claims.iss);
  if (parts.length !== 3 || !account) return refuse(400, 'invalid_grant', 'Invalid grant: account not found');
  const { verify } = await import('node:crypto');
  if (!verify('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`), account.publicKey, Buffer.from(parts[2], 'base64url'))) {
    return refuse(400, 'invalid_grant', 'Invalid JWT Signature.');
  }
  const now = Math.floor(Date.now() / 1000);
  if (claims.aud !== `${base}${tokenPath}` || !(claims.exp > now) || claims.exp - claims.iat > 3600 || typeof claims.sub !== 'string') {
    return refuse(400, 'invalid_grant', 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.');
  }
  const scopes = String(claims.scope || '').split(' ').filter(Boolean);
  if (!scopes.length || !scopes.every((scope) => account.scopes.includes(scope))) {
    return refuse(401, 'unauthorized_client', 'Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.');
  }
  const client = await provider.Client.find(account.clientId);
  const token = new provider.AccessToken({ accountId: claims.sub.toLowerCase(), client, scope: scopes.join(' '), gty: 'jwt_bearer' });
  ctx.set('Cache-Control', 'no-store');
  ctx.body = { access_token: await token.save(), expires_in: token.expiration, token_type: 'Bearer' };
  return undefined;
}

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
  } else if (route === 'POST /_test/app_roles') {
    // {"client_id": "...", "roles": ["IMAP.AccessAsApp", ...]}: the app's consented permissions
    const { client_id: clientId, roles } = JSON.parse((await readRaw(ctx.req)) || '{}');
    appRoles.set(clientId, roles);
    ctx.body = { ok: true };
  } else if (route === 'POST /_test/app_mailbox') {
    // {"client_id": "...", "mailbox": "x@example.test" | null}: Add-MailboxPermission (or remove)
    const { client_id: clientId, mailbox } = JSON.parse((await readRaw(ctx.req)) || '{}');
    if (mailbox) appMailboxes.set(clientId, mailbox.toLowerCase());
    else appMailboxes.delete(clientId);
    ctx.body = { ok: true, service_principal: servicePrincipal(clientId) };
  } else if (route === 'POST /_test/service_account') {
    // {"client_email", "client_id", "public_key": PEM, "scopes": [...]}: the key, and the scopes
    // delegated domain-wide (an empty list: delegation missing)
    const body = JSON.parse((await readRaw(ctx.req)) || '{}');
    serviceAccounts.set(body.client_email, { clientId: body.client_id, publicKey: body.public_key, scopes: body.scopes || [] });
    ctx.body = { ok: true };
  } else if (route === 'GET /_test/consents') {
    ctx.body = { consents };
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

// Microsoft's admin consent endpoint, test shape: the administrator (nobody, here) accepts at
// once; the answer goes to the client's registered redirect URI with the state, like
// `admin_consent=True&tenant={tid}&state=...`. An unknown client or redirect URI gets an error
// page, as at Microsoft (AADSTS700016 / AADSTS50011), and nothing is redirected.
async function adminConsent(ctx, tenant) {
  const { client_id: clientId, redirect_uri: redirectUri, state } = ctx.query;
  const client = clientId ? await provider.Client.find(String(clientId)) : undefined;
  if (!knownTenants.has(tenant) || !client || !client.redirectUris.includes(String(redirectUri))) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = '<!DOCTYPE html><title>IdP error</title><pre id="error">AADSTS700016 or AADSTS50011: unknown application or redirect URI</pre>';
    return;
  }
  consents.push({ client_id: clientId, tenant: tid, at: new Date().toISOString() });
  const answer = querystring.stringify({ admin_consent: 'True', tenant: tid, ...(state ? { state } : {}) });
  ctx.redirect(`${redirectUri}${String(redirectUri).includes('?') ? '&' : '?'}${answer}`);
}

// Dovecot 2.3's oauth2 passdb sends only the token to the introspection endpoint (its
// introspection_url takes no %variables), and compares the `email` of the answer with the login
// name. Exchange opens a mailbox to an application only with Add-MailboxPermission: here the
// introspection of an application token names the one mailbox the test granted the application
// (POST /_test/app_mailbox), so Dovecot (and Postfix through its SASL) accepts the token for that
// mailbox and refuses every other one; without a grant the token is inactive.
// A resource server's who-am-I endpoint (osTicket's "Resource Details"): the owner of a valid
// access token, whatever its scopes. Userinfo answers only tokens granted openid; this one is
// how a grant without openid tells who signed in.
async function resourceMe(ctx) {
  const [scheme, value] = String(ctx.get('authorization') || '').split(' ');
  const token = scheme === 'Bearer' && value ? await provider.AccessToken.find(value) : undefined;
  if (!token || token.isExpired) {
    ctx.status = 401;
    ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
    ctx.body = { error: 'invalid_token' };
    return;
  }
  ctx.body = { id: token.accountId, email: token.accountId };
}

async function appIntrospection(ctx) {
  const raw = await readRaw(ctx.req);
  ctx.req.body = raw;
  const form = querystring.parse(raw);
  const parts = typeof form.token === 'string' ? form.token.split('.') : [];
  if (parts.length !== 3) return false;
  let claims;
  try {
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
  } catch {
    return false;
  }
  if (!claims || typeof claims.appid !== 'string') return false;
  const basic = `Basic ${Buffer.from(`${introspector.client_id}:${introspector.client_secret}`).toString('base64')}`;
  if (ctx.get('authorization') !== basic) {
    ctx.status = 401;
    ctx.body = { error: 'invalid_client' };
    return true;
  }
  const { createPublicKey, verify } = await import('node:crypto');
  const signed = verify('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`), createPublicKey(privateKey), Buffer.from(parts[2], 'base64url'));
  const mailbox = appMailboxes.get(claims.appid);
  const active = signed && claims.exp * 1000 > Date.now() && claims.iss === issuer && Boolean(mailbox);
  ctx.body = active
    ? { active: true, client_id: claims.appid, scope: claims.scope, aud: claims.aud, exp: claims.exp, email: mailbox, roles: claims.roles }
    : { active: false };
  return true;
}

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
  const consent = microsoft && ctx.method === 'GET' && ctx.path.match(/^\/([^/]+)\/adminconsent$/);
  if (consent) {
    await adminConsent(ctx, consent[1]);
    return;
  }
  if (microsoft && ctx.method === 'POST' && ctx.path === '/token/introspection' && (await appIntrospection(ctx))) {
    return;
  }
  if (ctx.method === 'GET' && ctx.path === '/api/me') {
    await resourceMe(ctx);
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
  if (google && ctx.path === authPath) {
    // Google knows no offline_access scope: access_type=offline asks for a refresh token, and
    // only a consent prompt issues one (what oidc-provider does for offline_access).
    const scope = String(ctx.query.scope || '').split(' ').filter((s) => s && s !== 'offline_access');
    if (ctx.query.access_type === 'offline') scope.push('offline_access');
    ctx.query = { ...ctx.query, scope: scope.join(' ') };
  }
  const isToken = ctx.path === tokenPath && ctx.method === 'POST';
  let form;
  if (isToken && (failures.length || microsoft || serviceAccounts.size)) {
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
  if (isToken && form?.grant_type === JWT_BEARER && !failures.length) {
    await serviceAccountGrant(ctx, form);
    count(JWT_BEARER, ctx.status);
    return;
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
    if (google && ctx.status === 200 && typeof ctx.body?.scope === 'string') {
      ctx.body.scope = ctx.body.scope.split(' ').filter((s) => s && s !== 'offline_access').join(' ');
    }
    count(grantType, ctx.status);
  }
});

const server = https.createServer(tls, provider.callback()).listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider (${shape}) listening on ${base}, issuer ${issuer}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
export default server;
