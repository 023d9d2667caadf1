// A node's log: each line stamped when it is logged, written a moment later
// (on the event loop's next turn, with every line logged meanwhile, in order).
// A write to a pipe is synchronous and wakes the reader, and on a busy machine
// the woken reader takes the writer's CPU: a line logged in a migration's down
// time (a process arriving) cost the down time ~1 ms here. Written later, it
// leaves the down time alone. Lines still pending when the process exits are
// written then.

/** `write` gets one or more whole lines at a time. */
export function deferredLog(write: (text: string) => void, prefix: () => string): (m: string) => void {
  let pending: string[] = [];
  const flush = () => {
    if (!pending.length) return;
    const text = pending.join('');
    pending = [];
    write(text);
  };
  process.on('exit', flush);
  return (m: string) => {
    if (!pending.length) setImmediate(flush);
    pending.push(`${prefix()} ${m}\n`);
  };
}
