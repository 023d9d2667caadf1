// readmostly: a process with a large table it only reads and a smaller region it
// writes all the time (a lookup service: a read-mostly working set beside a hot
// one). The case assisted post-copy is for: after its pass only the hot region
// is modified, and faults on the table are answered "not modified".
//
// usage: readmostly [tableMB] [hotMB] [steps-in-millions]   (defaults 16, 4, 50)
//
// The table is filled once at start (a function of the index, never zero);
// then each step reads a table word picked by xorshift and folds it into a
// hot word picked by the same generator, so the result depends on every step
// and on every table word read. Prints "step N checksum X" every 1/10 of the
// steps (X: FNV over a sample of the hot region) and "done ... checksum X"
// (over all of it) at the end. Deterministic: no clock, no random_get.

let rngState: u64 = 0x7265_6164_6d6f_7374; // "readmost"

function rnd(): u64 {
  let x = rngState;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  rngState = x;
  return x;
}

function parseArg(i: i32, def: i32): i32 {
  const argv = process.argv;
  if (argv.length <= i) return def;
  const v = I32.parseInt(argv[i]);
  if (isNaN(v) || v <= 0) {
    process.stderr.write("readmostly: bad numeric argument " + argv[i] + "\n");
    process.exit(2);
  }
  return <i32>v;
}

const tableMB = parseArg(1, 16);
const hotMB = parseArg(2, 4);
const millions = parseArg(3, 50);
if (tableMB > 1024 || hotMB > 1024) {
  process.stderr.write("readmostly: MB must be in 1..1024\n");
  process.exit(2);
}
console.log("readmostly: table " + tableMB.toString() + " MB, hot " + hotMB.toString() + " MB, " + millions.toString() + " million steps");

const tableWords = tableMB * 262144;
const hotWords = hotMB * 262144;
const table = new Uint32Array(tableWords);
const hot = new Uint32Array(hotWords);
for (let i = 0; i < tableWords; i++) unchecked(table[i] = (<u32>i * 0x9e3779b1) | 1);

function sample(step: i32): u32 {
  let h: u32 = 0x811c9dc5;
  for (let i = step; i < hotWords; i += step) h = (h ^ unchecked(hot[i])) * 0x01000193;
  return h;
}

const total: i64 = <i64>millions * 1000000;
const every: i64 = total / 10 > 0 ? total / 10 : 1;
let done: i64 = 0;
while (done < total) {
  const n = total - done < every ? total - done : every;
  for (let k: i64 = 0; k < n; k++) {
    const x = rnd();
    const t = unchecked(table[<i32>((x >> 8) % <u64>tableWords)]);
    const j = <i32>((x >> 40) % <u64>hotWords);
    unchecked(hot[j] = hot[j] * 31 + t);
  }
  done += n;
  console.log("step " + done.toString() + " checksum " + sample(61).toString(16));
}
console.log("done " + done.toString() + " steps checksum " + sample(1).toString(16));
