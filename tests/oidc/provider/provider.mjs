// A real OpenID Connect provider for Chorus's single sign-on tests: panva's certified
// oidc-provider with its built-in (development) login page, configured from a JSON file the
// test writes: `node provider.mjs CONFIG.json`. It prints `ready ISSUER` once listening.
//
// The file holds: issuer and port; the signing keys (private JWKs, the first signs: rotating
// means restarting with a new first key, with or without the old one still published);
// the resource servers (audiences) whose access tokens are JWTs (RFC 9068); the clients;
// the users' claims (`email`, `groups`); and the access token lifetime per client.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users;

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: { keys: config.keys },
  // The login page accepts any password; the login names the account.
  async findAccount(_ctx, id) {
    if (!users[id]) return undefined;
    return { accountId: id, async claims() { return { sub: id, email: users[id].email }; } };
  },
  claims: { openid: ['sub'], email: ['email'] },
  scopes: ['openid', 'email', 'chorus'],
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.resources[0],
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resource, client) {
        if (!config.resources.includes(resource)) throw new Error(`unknown resource ${resource}`);
        return {
          scope: 'chorus',
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: config.accessTokenTTL[client.clientId] ?? config.accessTokenTTL.default,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // The groups a person is in go into their access tokens, as an IdP's group claim does.
  async extraTokenClaims(_ctx, token) {
    const user = users[token.accountId];
    return user ? { email: user.email, groups: user.groups } : undefined;
  },
  // No consent screen: the test users consent to everything the client asks.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email');
    for (const resource of config.resources) grant.addResourceScope(resource, 'chorus');
    await grant.save();
    return grant;
  },
  // Refresh tokens without offline_access: they end with the person's session at the provider.
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { Session: 3600, Grant: 3600, RefreshToken: 3600, DeviceCode: 600, Interaction: 600 },
  pkce: { required: () => true },
});
provider.proxy = false;

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`ready ${config.issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
