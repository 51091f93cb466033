import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { grantTokens } from '../../../grants/index.ts'
import { formEndpointOptions } from '../../../plugins/body.ts'
import { tokenRequest, tokenRequestHeaders, tokenResponse } from '../../../schemas/oauth.ts'

// RFC 6749 §3.2: the grant named by grant_type (grants/index.ts) answers.
const tokenRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/oauth/token', formEndpointOptions(fastify, tokenRequest, tokenResponse, {
    operationId: 'issueToken',
    summary: 'Issue an access token and a refresh token, or exchange a token',
    description: 'The token endpoint of RFC 6749 §3.2. `grant_type=client_credentials` (RFC 6749 §4.4) starts a session; ' +
      '`grant_type=refresh_token` (RFC 6749 §6) continues it: the refresh token is single use, and the answer carries its successor. ' +
      'The answer is that of RFC 6749 §5.1; the access token is a JWT of RFC 9068, signed with the key published at /.well-known/jwks.json.\n\n' +
      '`grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693) takes a `subject_token`, an access token of this service ' +
      'issued to the client or to one its `may_exchange` lists, and an optional `actor_token`; it answers with an access token for the same subject, ' +
      'issued to the client, within the subject token\'s scope, lifetime and session, its `act` claim naming the actor, and no refresh token (RFC 8693 §2.2.1). ' +
      'A subject or actor token that is not valid is `invalid_request`, as RFC 8693 §2.2.2 requires.\n\n' +
      'The client authenticates with exactly one method: HTTP Basic (client_secret_basic, RFC 6749 §2.3.1), ' +
      '`client_id` and `client_secret` in the form (client_secret_post), or a signed `client_assertion` (private_key_jwt, RFC 7523 §2.2). ' +
      'A parameter sent without a value counts as omitted (RFC 6749 §3.1).\n\n' +
      'With a `DPoP` header (RFC 9449 §5), the tokens are bound to the key of its proof: the access token carries `cnf.jkt` and ' +
      '`token_type` is `DPoP`; a refresh of such a session needs a proof of the same key. A refused proof is `invalid_dpop_proof`; ' +
      'when DPOP_NONCE_REQUIRED is on, a proof without a current server nonce is `use_dpop_nonce`, with one in the `DPoP-Nonce` header.\n\n' +
      'To try it here: Authorize with the client id and secret (clientSecretBasic), then Execute with the form as it is.'
  }, tokenRequestHeaders), async (request, reply) => {
    return await grantTokens({ request, body: request.body, reply, fastify })
  })
}

export default tokenRoute
