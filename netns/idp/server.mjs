// The lab's OpenID Connect provider: node-oidc-provider (npm oidc-provider 9.13.3)
// behind HTTPS with a certificate from the lab CA, with the lab's users and
// clients, and a small login form of its own (username + password) in place
// of the library's development interactions. Consent is implied: the lab's
// clients are first-party (a grant is made on login).
//
//   node netns/idp/server.mjs CONFIG.json
//
// CONFIG.json (written by `gslb lab up`, netns/lab.py):
//   { "issuer": "https://idp.lab.test", "listen": [["198.18.0.80", 443], ...],
//     "cert": "cert.pem", "key": "key.pem", "cookie_keys": ["..."], "jwks": {"keys": [...]},
//     "clients": [{"client_id", "client_secret", "redirect_uris": [...]}],
//     "users": [{"username", "password", "sub", "email", "name", "groups": [...]}] }
//
// Logs one line per event to stderr; never a password or a secret.
import fs from 'node:fs';
import https from 'node:https';
import { timingSafeEqual } from 'node:crypto';

import Provider from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const users = new Map(cfg.users.map((u) => [u.sub, u]));
const byName = new Map(cfg.users.map((u) => [u.username, u]));
const log = (event, fields = {}) => {
  const kv = Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(String(v))}`).join(' ');
  process.stderr.write(`event=${event} ${kv}\n`);
};

const configuration = {
  clients: cfg.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: cfg.jwks,
  cookies: { keys: cfg.cookie_keys },
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  features: { devInteractions: { enabled: false }, userinfo: { enabled: true } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const u = users.get(sub);
    if (!u) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, email: u.email, email_verified: true, name: u.name, groups: u.groups || [] };
      },
    };
  },
  async loadExistingGrant(ctx) {
    // First-party clients: every scope and claim asked for is granted at login.
    const { oidc } = ctx;
    if (!oidc.session?.accountId) return undefined;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    if (grantId) {
      const found = await oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    grant.addOIDCScope('openid email profile groups');
    grant.addOIDCClaims(['sub', 'email', 'email_verified', 'name', 'groups']);
    await grant.save();
    return grant;
  },
  ttl: { AccessToken: 3600, AuthorizationCode: 120, IdToken: 3600, Interaction: 1800, Session: 86400, Grant: 86400 },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>oops</title><h1>${esc(out.error)}</h1><p>${esc(out.error_description || '')}</p>`;
  },
};

const provider = new Provider(cfg.issuer, configuration);
provider.proxy = false;
provider.on('server_error', (ctx, err) => log('server_error', { error: err.message }));
provider.on('grant.success', (ctx) => log('token_issued', { client: ctx.oidc.client?.clientId }));
provider.on('authorization.error', (ctx, err) => log('authorization_error', { error: err.message }));
provider.on('grant.error', (ctx, err) => log('token_error', { error: err.message }));

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function loginPage(uid, message = '') {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Lab IdP: sign in</title></head><body>
<h1>Sign in to the lab IdP</h1>${message ? `<p id="error">${esc(message)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" id="login">
<label>Username <input name="username" id="username" autocomplete="username" required></label>
<label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="submit">Sign in</button>
</form></body></html>`;
}

function sameText(a, b) {
  const x = Buffer.from(String(a)), y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 8192) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (details.prompt.name !== 'login') {
    // consent: granted by loadExistingGrant; finish at once
    const grant = new provider.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
    grant.addOIDCScope('openid email profile groups');
    grant.addOIDCClaims(['sub', 'email', 'email_verified', 'name', 'groups']);
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET' && !action) {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    return res.end(loginPage(uid));
  }
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const u = byName.get(form.get('username') || '');
    if (!u || !sameText(u.password, form.get('password') || '')) {
      log('login_failed', { username: (form.get('username') || '').slice(0, 64) });
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      return res.end(loginPage(uid, 'Wrong username or password.'));
    }
    log('login_ok', { username: u.username, client: details.params.client_id });
    return provider.interactionFinished(req, res, { login: { accountId: u.sub } }, { mergeWithLastSubmission: false });
  }
  res.writeHead(405);
  return res.end();
}

const callback = provider.callback();
const handler = async (req, res) => {
  const m = /^\/interaction\/([A-Za-z0-9_-]{1,64})(?:\/(login))?$/.exec((req.url || '').split('?')[0]);
  if (!m) return callback(req, res);
  try {
    await interaction(req, res, m[1], m[2]);
  } catch (err) {
    log('interaction_error', { error: err.message });
    if (!res.headersSent) {
      res.writeHead(400, { 'Content-Type': 'text/plain' });
      res.end(`interaction failed: ${err.message}\n`);
    }
  }
};

const tls = { cert: fs.readFileSync(cfg.cert), key: fs.readFileSync(cfg.key) };
for (const [host, port] of cfg.listen) {
  https.createServer(tls, handler).listen(port, host, () => log('listening', { address: `${host}:${port}`, issuer: cfg.issuer }));
}
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
