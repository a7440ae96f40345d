// An OpenID Connect server with Keycloak's URL layout, for Mercato's tests only.
//
// No Keycloak server can be installed here, so the tests run oidc-provider (OpenID
// Certified) mounted per realm under /realms/{realm}, with its routes where Keycloak has
// them (/protocol/openid-connect/auth|token|certs|userinfo|logout), JWT access tokens
// carrying realm_access.roles and preferred_username, a login form with Keycloak's element
// ids, and the admin REST endpoints python-keycloak calls for users, realm roles and role
// mappings. userinfo and introspection are served here: oidc-provider refuses JWT access
// tokens at its own.
//
//   node server.mjs realms.json      prints "LISTENING <port>" once it listens on 127.0.0.1
//
// realms.json: {"realms": {"<name>": {"roles": ["..."], "clients": [{"client_id", "client_secret",
// "redirect_uris", "post_logout_redirect_uris", "backchannel_logout_uri", "admin"}],
// "users": [{"username", "email", "password", "roles", "first_name", "last_name", "enabled"}]}}}
//
// /_control/realms/{realm}/rotate-key (POST {"keep_old": bool}) changes the signing key;
// /_control/realms/{realm}/sign (POST {"claims": {...}}) signs a token with the current key;
// /_control/realms/{realm}/client (POST a client as in realms.json) adds or replaces a client;
// /_control/realms/{realm}/user (POST a user as in realms.json) adds a user; .../users lists them.
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const API_RESOURCE = 'urn:mercato:test:api';
const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const realms = new Map();
let base;

const ROUTES = {
  authorization: '/protocol/openid-connect/auth',
  token: '/protocol/openid-connect/token',
  jwks: '/protocol/openid-connect/certs',
  userinfo: '/protocol/openid-connect/userinfo-oidc-provider',
  end_session: '/protocol/openid-connect/logout',
  introspection: '/protocol/openid-connect/token/introspect-oidc-provider',
  revocation: '/protocol/openid-connect/revoke',
};

function escape(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function newKey() {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

function publicKey(jwk) {
  const { kty, n, e, kid, alg, use } = jwk;
  return { kty, n, e, kid, alg, use };
}

function newUser(realm, input) {
  const id = input.id || crypto.randomUUID();
  const user = {
    id,
    username: (input.username || input.email).toLowerCase(),
    email: input.email ? input.email.toLowerCase() : undefined,
    emailVerified: input.emailVerified ?? input.email_verified ?? true,
    firstName: input.firstName ?? input.first_name ?? '',
    lastName: input.lastName ?? input.last_name ?? '',
    enabled: input.enabled ?? true,
    password: input.password,
    roles: new Set(input.roles || []),
    attributes: input.attributes || {},
    createdTimestamp: Date.now(),
  };
  for (const credential of input.credentials || []) {
    if (credential.type === 'password') user.password = credential.value;
  }
  realm.users.set(id, user);
  return user;
}

function representation(user) {
  return {
    id: user.id,
    username: user.username,
    email: user.email,
    emailVerified: user.emailVerified,
    firstName: user.firstName,
    lastName: user.lastName,
    enabled: user.enabled,
    attributes: user.attributes,
    createdTimestamp: user.createdTimestamp,
  };
}

function roleRepresentation(realm, name) {
  return { id: `role-${realm.name}-${name}`, name, composite: false, clientRole: false, containerId: realm.name };
}

function userClaims(user) {
  const name = [user.firstName, user.lastName].filter(Boolean).join(' ') || user.username;
  return {
    sub: user.id,
    email: user.email,
    email_verified: user.emailVerified,
    name,
    given_name: user.firstName,
    family_name: user.lastName,
    preferred_username: user.username,
    realm_access: { roles: [...user.roles] },
  };
}

function loginPage(realm, uid, error, username) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to ${escape(realm.name)}</title></head>
<body id="keycloak-bg">
<h1 id="kc-page-title">Sign in to your account</h1>
${error ? `<div id="input-error" role="alert">${escape(error)}</div>` : ''}
<form id="kc-form-login" method="post" action="/realms/${escape(realm.name)}/login-actions/authenticate?uid=${escape(uid)}">
  <label for="username">Username or email</label>
  <input id="username" name="username" type="text" autocomplete="username" value="${escape(username)}" autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password">
  <input id="kc-login" name="login" type="submit" value="Sign In">
</form>
</body></html>`;
}

async function buildProvider(realm) {
  const issuer = `${base}/realms/${realm.name}`;
  const provider = new Provider(issuer, {
    clients: realm.clients.map((c) => {
      const interactive = (c.redirect_uris || []).length > 0;
      const client = {
        client_id: c.client_id,
        client_secret: c.client_secret,
        redirect_uris: c.redirect_uris || [],
        post_logout_redirect_uris: c.post_logout_redirect_uris || [],
        // a client with no redirect URIs must not list the authorization-code grant
        grant_types: interactive ? ['authorization_code', 'refresh_token', 'client_credentials'] : ['client_credentials'],
        response_types: interactive ? ['code'] : [],
        token_endpoint_auth_method: 'client_secret_post',
      };
      if (c.backchannel_logout_uri) {
        client.backchannel_logout_uri = c.backchannel_logout_uri;
        client.backchannel_logout_session_required = true;
      }
      return client;
    }),
    jwks: { keys: realm.keys },
    routes: ROUTES,
    cookies: { keys: ['mercato-test-oidc-cookie-key'] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
      roles: ['realm_access'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'roles'],
    conformIdTokenClaims: false,
    pkce: { required: () => false },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      backchannelLogout: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        // Keycloak asks nothing when the client sends id_token_hint: submit at once
        async logoutSource(ctx, form) {
          ctx.body = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Signing out</title></head>
<body>${form}<input type="hidden" form="op.logoutForm" name="logout" value="yes">
<script>document.forms[0].submit()</script></body></html>`;
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = '<!DOCTYPE html><html lang="en"><head><title>Signed out</title></head><body><h1 id="kc-page-title">You are logged out</h1></body></html>';
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => API_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource, client) => ({
          scope: 'openid email profile roles',
          audience: client.clientId,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const claims = { azp: token.clientId };
      if (token.accountId) {
        const user = realm.users.get(token.accountId);
        if (user) Object.assign(claims, userClaims(user));
        if (token.sid) claims.sid = token.sid;
      }
      return claims;
    },
    findAccount: async (ctx, sub) => {
      const user = realm.users.get(sub);
      if (!user || !user.enabled) return undefined;
      return { accountId: sub, claims: async () => userClaims(user) };
    },
    // consent is implied, as for a Keycloak client without "consent required"
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      if (!grant) {
        grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      }
      grant.addOIDCScope('openid email profile roles offline_access');
      grant.addOIDCClaims(['sid', 'realm_access']);
      grant.addResourceScope(API_RESOURCE, 'openid email profile roles');
      await grant.save();
      return grant;
    },
    // oidc-provider refuses to call special-use addresses (SSRF protection); this test
    // server's only peer, the Mercato under test, listens on loopback
    fetch: (url, options) => {
      delete options.dispatcher;
      return globalThis.fetch(url, options);
    },
    interactions: { url: async (ctx, interaction) => `/realms/${realm.name}/login-actions/authenticate?uid=${interaction.uid}` },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><html lang="en"><head><title>Error</title></head><body><div id="kc-error-message">${escape(out.error)}: ${escape(out.error_description)}</div></body></html>`;
    },
  });
  provider.on('server_error', (ctx, err) => console.error('oidc server_error', err));
  provider.on('backchannel.error', (ctx, err) => console.error('backchannel logout failed', err.message, err.cause));
  return provider;
}

async function verify(realm, token) {
  const keys = jose.createLocalJWKSet({ keys: realm.keys.map(publicKey) });
  const { payload } = await jose.jwtVerify(token, keys, { issuer: `${base}/realms/${realm.name}` });
  return payload;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks).toString('utf8');
  const type = req.headers['content-type'] || '';
  if (type.startsWith('application/json')) return raw ? JSON.parse(raw) : {};
  return Object.fromEntries(new URLSearchParams(raw));
}

function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  const type = typeof body === 'string' ? 'text/html; charset=utf-8' : 'application/json';
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(payload), ...headers });
  res.end(payload);
}

function bearer(req) {
  const header = req.headers.authorization || '';
  return header.toLowerCase().startsWith('bearer ') ? header.slice(7).trim() : null;
}

async function interaction(realm, req, res, url) {
  const details = await realm.provider.interactionDetails(req, res);
  const uid = details.uid;
  if (req.method === 'GET') return send(res, 200, loginPage(realm, uid));
  const form = await readBody(req);
  const login = String(form.username || '').toLowerCase();
  const user = [...realm.users.values()].find((u) => u.username === login || u.email === login);
  if (!user || user.password === undefined || user.password !== form.password) {
    return send(res, 200, loginPage(realm, uid, 'Invalid username or password.', form.username));
  }
  if (!user.enabled) return send(res, 200, loginPage(realm, uid, 'Account is disabled, contact your administrator.', form.username));
  return realm.provider.interactionFinished(req, res, { login: { accountId: user.id } }, { mergeWithLastSubmission: false });
}

async function userinfo(realm, req, res) {
  try {
    const claims = await verify(realm, bearer(req) || '');
    const user = realm.users.get(claims.sub);
    if (!user || !user.enabled) throw new Error('user not found or disabled');
    return send(res, 200, userClaims(user));
  } catch (error) {
    return send(res, 401, { error: 'invalid_token', error_description: error.message }, { 'WWW-Authenticate': 'Bearer error="invalid_token"' });
  }
}

async function introspect(realm, req, res) {
  const form = await readBody(req);
  const client = realm.clients.find((c) => c.client_id === form.client_id && c.client_secret === form.client_secret);
  if (!client) return send(res, 401, { error: 'invalid_client' });
  try {
    const claims = await verify(realm, form.token || '');
    const user = claims.sub ? realm.users.get(claims.sub) : undefined;
    if (claims.sub && (!user || !user.enabled)) return send(res, 200, { active: false });
    return send(res, 200, { ...claims, active: true, client_id: claims.azp, username: claims.preferred_username, token_type: 'Bearer' });
  } catch {
    return send(res, 200, { active: false });
  }
}

async function admin(realm, req, res, rest) {
  let caller;
  try {
    caller = await verify(realm.adminRealm || realm, bearer(req) || '');
  } catch (error) {
    return send(res, 401, { error: 'HTTP 401 Unauthorized', error_description: error.message });
  }
  const authority = (realm.adminRealm || realm).clients.find((c) => c.client_id === caller.azp);
  if (!authority || !authority.admin) return send(res, 403, { error: 'HTTP 403 Forbidden' });
  const url = new URL(rest, base);
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const method = req.method;
  const users = [...realm.users.values()];
  if (parts[0] === 'users' && parts.length === 1 && method === 'GET') {
    const q = url.searchParams;
    const exact = q.get('exact') === 'true';
    const match = (value, wanted) => wanted === null || (exact ? value === wanted.toLowerCase() : (value || '').includes(wanted.toLowerCase()));
    const search = q.get('search');
    const found = users.filter((u) => match(u.username, q.get('username')) && match(u.email, q.get('email'))
      && (search === null || u.username.includes(search.toLowerCase()) || (u.email || '').includes(search.toLowerCase())));
    return send(res, 200, found.map(representation));
  }
  if (parts[0] === 'users' && parts[1] === 'count' && method === 'GET') return send(res, 200, users.length);
  if (parts[0] === 'users' && parts.length === 1 && method === 'POST') {
    const body = await readBody(req);
    const username = (body.username || body.email || '').toLowerCase();
    if (!username) return send(res, 400, { errorMessage: 'username is missing' });
    if (users.some((u) => u.username === username)) return send(res, 409, { errorMessage: 'User exists with same username' });
    if (body.email && users.some((u) => u.email === body.email.toLowerCase())) return send(res, 409, { errorMessage: 'User exists with same email' });
    const user = newUser(realm, { ...body, username, roles: [] });
    return send(res, 201, undefined, { Location: `${base}/admin/realms/${realm.name}/users/${user.id}` });
  }
  const user = parts[0] === 'users' ? realm.users.get(parts[1]) : undefined;
  if (parts[0] === 'users' && !user) return send(res, 404, { error: 'User not found' });
  if (parts[0] === 'users' && parts.length === 2) {
    if (method === 'GET') return send(res, 200, representation(user));
    if (method === 'PUT') {
      const body = await readBody(req);
      for (const key of ['email', 'firstName', 'lastName', 'enabled', 'emailVerified', 'attributes']) {
        if (key in body) user[key] = key === 'email' && body.email ? body.email.toLowerCase() : body[key];
      }
      return send(res, 204);
    }
    if (method === 'DELETE') {
      realm.users.delete(user.id);
      return send(res, 204);
    }
  }
  if (parts[0] === 'users' && parts[2] === 'role-mappings' && parts[3] === 'realm') {
    if (method === 'GET') return send(res, 200, [...user.roles].map((name) => roleRepresentation(realm, name)));
    const body = await readBody(req);
    for (const role of Array.isArray(body) ? body : [body]) {
      if (!realm.roles.has(role.name)) return send(res, 404, { error: 'Role not found' });
      if (method === 'POST') user.roles.add(role.name);
      if (method === 'DELETE') user.roles.delete(role.name);
    }
    return send(res, 204);
  }
  if (parts[0] === 'roles' && parts.length === 1 && method === 'GET') {
    return send(res, 200, [...realm.roles].map((name) => roleRepresentation(realm, name)));
  }
  if (parts[0] === 'roles' && parts.length === 1 && method === 'POST') {
    const body = await readBody(req);
    if (realm.roles.has(body.name)) return send(res, 409, { errorMessage: `Role with name ${body.name} already exists` });
    realm.roles.add(body.name);
    return send(res, 201, undefined, { Location: `${base}/admin/realms/${realm.name}/roles/${encodeURIComponent(body.name)}` });
  }
  if (parts[0] === 'roles' && parts.length === 2 && method === 'GET') {
    if (!realm.roles.has(parts[1])) return send(res, 404, { error: 'Could not find role' });
    return send(res, 200, roleRepresentation(realm, parts[1]));
  }
  return send(res, 404, { error: 'not emulated here', path: url.pathname, method });
}

async function control(realm, req, res, action) {
  const body = await readBody(req);
  if (action === 'rotate-key') {
    const key = await newKey();
    realm.keys = body.keep_old ? [key, ...realm.keys] : [key];
    realm.provider = await buildProvider(realm);
    return send(res, 200, { kid: key.kid });
  }
  if (action === 'sign') {
    const [key] = realm.keys;
    const now = Math.floor(Date.now() / 1000);
    const claims = { iss: `${base}/realms/${realm.name}`, iat: now, exp: now + 300, jti: crypto.randomUUID(), ...body.claims };
    const user = claims.sub ? realm.users.get(claims.sub) : undefined;
    const token = await new jose.SignJWT({ ...(user ? userClaims(user) : {}), ...claims })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'at+jwt' })
      .sign(await jose.importJWK(key, 'RS256'));
    return send(res, 200, { access_token: token });
  }
  if (action === 'client') {
    realm.clients = [...realm.clients.filter((c) => c.client_id !== body.client_id), body];
    realm.provider = await buildProvider(realm);
    return send(res, 200, { client_id: body.client_id });
  }
  if (action === 'user') {
    const user = newUser(realm, body);
    for (const role of user.roles) realm.roles.add(role);
    return send(res, 200, { ...representation(user), roles: [...user.roles] });
  }
  if (action === 'users') {
    return send(res, 200, [...realm.users.values()].map((u) => ({ ...representation(u), roles: [...u.roles] })));
  }
  return send(res, 404, { error: 'unknown control action' });
}

async function handle(req, res) {
  const url = new URL(req.url, base);
  let match = url.pathname.match(/^\/admin\/realms\/([^/]+)(\/.*)$/);
  if (match && realms.has(match[1])) return admin(realms.get(match[1]), req, res, match[2] + url.search);
  match = url.pathname.match(/^\/_control\/realms\/([^/]+)\/([a-z-]+)$/);
  if (match && realms.has(match[1])) return control(realms.get(match[1]), req, res, match[2]);
  match = url.pathname.match(/^\/realms\/([^/]+)(\/.*)?$/);
  if (!match || !realms.has(match[1])) return send(res, 404, { error: 'Realm does not exist' });
  const realm = realms.get(match[1]);
  const rest = match[2] || '/';
  if (rest === '/login-actions/authenticate') return interaction(realm, req, res, url);
  if (rest === '/protocol/openid-connect/userinfo') return userinfo(realm, req, res);
  if (rest === '/protocol/openid-connect/token/introspect') return introspect(realm, req, res);
  if (rest === '/') return send(res, 200, { realm: realm.name, 'token-service': `${base}/realms/${realm.name}/protocol/openid-connect` });
  // the provider sees the path below its mount point, as when mounted by express or koa-mount
  req.originalUrl = req.url;
  req.url = rest + url.search;
  return realm.provider.callback()(req, res);
}

async function main() {
  const server = http.createServer((req, res) => {
    handle(req, res).catch((error) => {
      console.error(error);
      if (!res.headersSent) send(res, 500, { error: 'server_error', error_description: error.message });
    });
  });
  await new Promise((resolve) => server.listen(Number(process.env.PORT || 0), HOST, resolve));
  base = `http://${HOST}:${server.address().port}`;
  for (const [name, input] of Object.entries(spec.realms)) {
    const realm = { name, clients: input.clients || [], roles: new Set(input.roles || []), users: new Map(), keys: [await newKey()] };
    for (const user of input.users || []) {
      newUser(realm, user);
      for (const role of user.roles || []) realm.roles.add(role);
    }
    realms.set(name, realm);
  }
  for (const [name, input] of Object.entries(spec.realms)) {
    const realm = realms.get(name);
    // Keycloak's master-realm admin may manage other realms
    if (input.admin_realm) realm.adminRealm = realms.get(input.admin_realm);
    realm.provider = await buildProvider(realm);
  }
  process.stdout.write(`LISTENING ${server.address().port}\n`);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
