/**
 * The one error type of the protocol: every refusal a client can get (a bad
 * path, a missing token, a limit, a full disk) is an HttpError, thrown or
 * returned where it is found and rendered in one place (server/http/respond.ts)
 * for a plain response and a refused WebSocket upgrade alike.
 */

/** Status codes hookbot answers with, by name, so no code is a bare number. */
export const Status = {
  OK: 200,
  TEMPORARY_REDIRECT: 307,
  MOVED_PERMANENTLY: 301,
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  REQUEST_TIMEOUT: 408,
  PAYLOAD_TOO_LARGE: 413,
  URI_TOO_LONG: 414,
  TOO_MANY_REQUESTS: 429,
  HEADER_FIELDS_TOO_LARGE: 431,
  INTERNAL_SERVER_ERROR: 500,
  NOT_IMPLEMENTED: 501,
  SERVICE_UNAVAILABLE: 503,
} as const;

/** WebSocket close codes hookbot sends (RFC 6455 §7.4; 4000-4999 are ours). */
export const CloseCode = {
  /** Server shutting down: reconnect elsewhere. */
  GOING_AWAY: 1001,
  /** A subscriber sent data frames. */
  POLICY_VIOLATION: 1008,
  /** A frame larger than a subscriber may send. */
  MESSAGE_TOO_BIG: 1009,
  /** Too slow, or history unavailable: come back later (and resume by id). */
  TRY_AGAIN_LATER: 1013,
  /** This node missed messages a raw frame cannot announce: reconnect and resume with ?since=. */
  MISSED: 4000,
} as const;

export class HttpError extends Error {
  readonly status: number;
  /** Extra response headers (`www-authenticate`, `retry-after`, `allow`, `connection`). */
  readonly headers: Readonly<Record<string, string>>;
  /**
   * The exact body, where the wire format is fixed by the original (its
   * molly-guard answer); otherwise the body is `<status> <reason>[: message]`.
   */
  readonly body: string | undefined;

  constructor(status: number, message = '', headers: Record<string, string> = {}, body?: string) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.headers = headers;
    this.body = body;
  }
}
