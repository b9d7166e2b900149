/**
 * `?extra-metadata=<kind>`: wrap a publish body with the request's provider
 * headers. The github form is byte-identical to the original's Go
 * `json.Marshal(map[string]interface{}{...})`: keys sorted, `<>&` escaped,
 * payload as standard base64.
 */
import type { Headers } from './message.js';

export type EnvelopeBuilder = (headers: Headers, body: Buffer) => Buffer;

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

export function githubEnvelope(headers: Headers, body: Buffer): Buffer {
  return goJsonObject({
    Signature: headers['x-hub-signature'] ?? '',
    Event: headers['x-github-event'] ?? '',
    Delivery: headers['x-github-delivery'] ?? '',
    Payload: body.toString('base64'),
  });
}

export const ENVELOPES: Record<string, EnvelopeBuilder> = {
  github: githubEnvelope,
};
