/**
 * Server-Sent Events subscribers (issue 4 fills this in).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Context } from './context.js';
import type { Endpoint } from './topics.js';

export class SseTransport {
  readonly #ctx: Context;
  constructor(ctx: Context) {
    this.#ctx = ctx;
  }

  get connected(): number {
    return 0;
  }

  handle(_req: IncomingMessage, res: ServerResponse, _endpoint: Endpoint, _query: URLSearchParams): void {
    void this.#ctx;
    res.writeHead(406, { 'content-type': 'text/plain; charset=utf-8' });
    res.end('406 Not Acceptable: Server-Sent Events are not supported yet\n');
  }

  close(): void {}
}
