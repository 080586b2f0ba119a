// An independent relying party (openid-client v6) for the interop test
// (tests/identity/oauth/test_openid_client.py). It speaks JSON lines on stdin/stdout:
//   out {"authorize": URL}           the URL the browser goes to (after PAR with a signed request object)
//   in  {"callback": URL}            where the hub sent the browser back
//   out {"result": {...}}            what happened at the token endpoint, userinfo and refresh
// Configuration from the environment: ISSUER, CLIENT_ID, CLIENT_JWK (a private EC JWK with kid), REDIRECT_URI.
import * as client from 'openid-client'
import { createInterface } from 'node:readline'

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
const say = (value) => process.stdout.write(JSON.stringify(value) + '\n')

async function main() {
  const jwk = JSON.parse(process.env.CLIENT_JWK)
  const privateKey = await crypto.subtle.importKey('jwk', jwk, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign'])
  const signingKey = { key: privateKey, kid: jwk.kid }
  const config = await client.discovery(
    new URL(process.env.ISSUER),
    process.env.CLIENT_ID,
    { redirect_uris: [process.env.REDIRECT_URI] },
    client.PrivateKeyJwt(signingKey),
    { execute: [client.allowInsecureRequests] },
  )
  const dpop = client.getDPoPHandle(config, await client.randomDPoPKeyPair('ES256'))

  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const { searchParams } = await client.buildAuthorizationUrlWithJAR(
    config,
    {
      redirect_uri: process.env.REDIRECT_URI,
      scope: 'openid email offline_access',
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
    },
    signingKey,
  )
  const authorize = await client.buildAuthorizationUrlWithPAR(config, searchParams, { DPoP: dpop })
  say({ authorize: authorize.href })

  const { value } = await lines.next()
  const callback = new URL(JSON.parse(value).callback)
  const tokens = await client.authorizationCodeGrant(
    config, callback, { pkceCodeVerifier: verifier, expectedState: state }, undefined, { DPoP: dpop },
  )
  const sub = tokens.claims().sub
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, sub, { DPoP: dpop })
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token, undefined, { DPoP: dpop })
  const again = await client.fetchUserInfo(config, refreshed.access_token, sub, { DPoP: dpop })
  say({
    result: {
      token_type: tokens.token_type,
      access_token: tokens.access_token,
      userinfo,
      refreshed_token_type: refreshed.token_type,
      refreshed_access_token: refreshed.access_token,
      userinfo_after_refresh: again,
    },
  })
}

main().then(() => process.exit(0), (error) => {
  say({ error: `${error.name}: ${error.message}`, code: error.code, cause: error.cause ?? null })
  process.exit(1)
})
