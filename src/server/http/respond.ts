/**
 * Writing answers: every plain-text answer, and every refusal (an HttpError),
 * whether the request came as a normal HTTP request or as a WebSocket upgrade
 * whose raw socket we still hold. One renderer, so a refusal reads the same
 * whichever way the client came in.
 */
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { HttpError, Status } from '../../protocol/errors.js';

export const TEXT = 'text/plain; charset=utf-8';

/**
 * On every answer: attacker-chosen text (a topic, a `since` value) is echoed
 * in some of them, and no browser may sniff that into something executable.
 */
export const NOSNIFF = 'nosniff';

/** `<status> <reason>` plus `: message` when there is one; the exact body where the error fixes it. */
export function errorBody(err: HttpError): string {
  if (err.body !== undefined) return err.body.endsWith('\n') ? err.body : err.body + '\n';
  const line = `${err.status} ${STATUS_CODES[err.status] ?? 'Error'}`;
  return err.message ? `${line}: ${err.message}\n` : `${line}\n`;
}

/** A plain-text answer; a body without a final newline gets one. */
export function reply(res: ServerResponse, status: number, body: string, headers: Readonly<Record<string, string>> = {}): void {
  // Too late for a status line: all that is left is to cut the connection.
  if (res.headersSent) return void res.destroy();
  const payload = body.endsWith('\n') ? body : body + '\n';
  res.writeHead(status, { 'content-type': TEXT, 'content-length': Buffer.byteLength(payload), 'x-content-type-options': NOSNIFF, ...headers });
  res.end(payload);
}

/** Renders an HttpError as the answer to a normal request. */
export function replyError(res: ServerResponse, err: HttpError): void {
  reply(res, err.status, errorBody(err), err.headers);
}

/** Renders an HttpError on a raw socket (a refused WebSocket upgrade, a request node could not parse), then closes it. */
export function refuseSocket(socket: Duplex, err: HttpError): void {
  if (!socket.writable) return void socket.destroy();
  const payload = errorBody(err);
  let head = `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? 'Error'}\r\nConnection: close\r\nContent-Type: ${TEXT}\r\nX-Content-Type-Options: ${NOSNIFF}\r\n`;
  for (const [name, value] of Object.entries(err.headers)) if (name.toLowerCase() !== 'connection') head += `${name}: ${value}\r\n`;
  socket.end(`${head}Content-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
}

/** Anything thrown while handling a request, as an HttpError: ours pass through, the rest are 500s. */
export function asHttpError(err: unknown): HttpError {
  return err instanceof HttpError ? err : new HttpError(Status.INTERNAL_SERVER_ERROR);
}
