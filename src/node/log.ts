// A node's log: each line stamped when it is logged, written a moment later
// (on the event loop's next turn, with every line logged meanwhile, in order).
// A write to a pipe is synchronous and wakes the reader, and on a busy machine
// the woken reader takes the writer's CPU: a line logged in a migration's down
// time (a process arriving) cost the down time ~1 ms here. Written later, it
// leaves the down time alone. Lines still pending when the process exits are
// written then; before a SIGKILL of its own (a crash fault), which no exit
// handler sees, a node calls `flush`.

/** A log line sink; `flush` writes any pending lines now. */
export type Log = ((m: string) => void) & { flush?: () => void };

/** `write` gets one or more whole lines at a time. */
export function deferredLog(write: (text: string) => void, prefix: () => string): Log {
  let pending: string[] = [];
  const flush = () => {
    if (!pending.length) return;
    const text = pending.join('');
    pending = [];
    write(text);
  };
  process.on('exit', flush);
  const log: Log = (m: string) => {
    if (!pending.length) setImmediate(flush);
    pending.push(`${prefix()} ${m}\n`);
  };
  log.flush = flush;
  return log;
}
