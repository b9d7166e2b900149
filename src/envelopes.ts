/**
 * `?extra-metadata=<kind>`: wrap a publish body with the request's provider
 * headers. The github form is byte-identical to the original's Go
 * `json.Marshal(map[string]interface{}{...})`: keys sorted, `<>&` escaped,
 * payload as standard base64.
 */
import { githubEnvelope } from './routers/github.js';
import { gitlabEnvelope } from './routers/gitlab.js';

/** Gets the request's own headers: gitlab's Delivery is Idempotency-Key, which is not a kept header. */
export type EnvelopeBuilder = (headers: Readonly<Record<string, string | string[] | undefined>>, body: Buffer) => Buffer;

/** JSON string literal escaped as Go's encoding/json does by default. */
export function goJsonString(value: string): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

/** A JSON object from string fields, keys sorted as Go sorts map keys. */
export function goJsonObject(fields: Record<string, string>): Buffer {
  const keys = Object.keys(fields).sort();
  return Buffer.from('{' + keys.map((k) => `${goJsonString(k)}:${goJsonString(fields[k])}`).join(',') + '}');
}

// The routers own their envelope formats (and read them back).
export { githubEnvelope, gitlabEnvelope };

export const ENVELOPES: Record<string, EnvelopeBuilder> = {
  github: githubEnvelope,
  gitlab: gitlabEnvelope,
};
