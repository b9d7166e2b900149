/**
 * Every router hookbot has, in one list: its name (`--router <name>`,
 * `?extra-metadata=<name>`), its adapter for the route pipeline, the
 * envelope builder of its `?extra-metadata=` form, and the serve option that
 * holds the secrets it verifies with. Config validation, the HTTP publish
 * path and the server's router start-up all read this list; adding a
 * provider means adding one entry here.
 */
import type { EnvelopeBuilder } from './envelope.js';
import { githubAdapter, githubEnvelope } from './github.js';
import { gitlabAdapter, gitlabEnvelope } from './gitlab.js';
import type { Adapter } from './pipeline.js';

export interface RouterSpec {
  readonly name: string;
  readonly adapter: Adapter<unknown>;
  readonly envelope: EnvelopeBuilder;
  readonly secret: {
    /** The Config field (and commander option key) holding the secrets. */
    readonly config: 'githubSecrets' | 'gitlabTokens';
    readonly option: 'githubSecret' | 'gitlabToken';
    readonly flag: string;
    readonly env: string;
    /** For the error when it is missing: "--router github needs <what>". */
    readonly what: string;
  };
}

export const ROUTERS: readonly RouterSpec[] = [
  {
    name: 'github',
    adapter: githubAdapter,
    envelope: githubEnvelope,
    secret: { config: 'githubSecrets', option: 'githubSecret', flag: '--github-secret', env: 'HOOKBOT_GITHUB_SECRET', what: 'the GitHub webhook secret' },
  },
  {
    name: 'gitlab',
    adapter: gitlabAdapter,
    envelope: gitlabEnvelope,
    secret: { config: 'gitlabTokens', option: 'gitlabToken', flag: '--gitlab-token', env: 'HOOKBOT_GITLAB_TOKEN', what: 'the GitLab webhook secret token' },
  },
];

export const ROUTER_NAMES: readonly string[] = ROUTERS.map((r) => r.name);

export function routerSpec(name: string): RouterSpec | undefined {
  return ROUTERS.find((r) => r.name === name);
}

/** The `?extra-metadata=<name>` envelope builder, if there is such a router. */
export function envelopeFor(name: string): EnvelopeBuilder | undefined {
  return routerSpec(name)?.envelope;
}
