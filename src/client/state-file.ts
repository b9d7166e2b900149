/**
 * The client's state file: the id of the last message the consumer finished
 * with, so a restarted subscriber resumes right after it.
 */
import { readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { isMessageId } from '../protocol/message.js';
import { SubscribeError } from './url.js';

/** The id kept in a state file, or undefined when the file does not exist. */
export function readStateFile(path: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SubscribeError(`cannot read state file ${path}: ${(err as Error).message}`);
  }
  const id = text.trim();
  if (id === '') return undefined;
  if (!isMessageId(id)) throw new SubscribeError(`state file ${path} does not hold a message id`);
  return id;
}

/**
 * Writes the id to a temp file and renames it over the state file, so a crash
 * mid-write leaves the old id rather than a torn one.
 */
export function writeStateFile(path: string, id: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, `${id}\n`);
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // The temp file may never have been created.
    }
    throw err;
  }
}
