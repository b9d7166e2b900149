/**
 * `?extra-metadata=<kind>`: wrap a publish body with the request's provider
 * headers. The github form is byte-identical to the original's Go
 * `json.Marshal(map[string]interface{}{...})`: keys sorted, `<>&` escaped,
 * payload as standard base64.
 */
import { githubEnvelope } from './github.js';
import { gitlabEnvelope } from './gitlab.js';

/** Gets the request's own headers: gitlab's Delivery is Idempotency-Key, which is not a kept header. */
export type EnvelopeBuilder = (headers: Readonly<Record<string, string | string[] | undefined>>, body: Buffer) => Buffer;

// The routers own their envelope formats (and read them back).
export { githubEnvelope, gitlabEnvelope };

export const ENVELOPES: Record<string, EnvelopeBuilder> = {
  github: githubEnvelope,
  gitlab: gitlabEnvelope,
};
