// asobjects: an AssemblyScript workload with a garbage-collected heap.
//
// usage: asobjects [steps] [count]   (defaults 1000 and 2000)
//
// Keeps `count` Particle objects in an Array, each holding a small Array of
// Vec objects (its trail). Every step moves every particle, replaces part of
// its trail with new objects (so the GC allocates and frees all the time),
// replaces one particle in 16 with a new one, keeps a Map from cell to count
// and builds a short string now and then. Deterministic: its own xorshift
// PRNG, no clock, no Math.random. Prints "step N checksum X" every 1/10 of
// the steps and "done ..." at the end. Built as a WASI command (exports
// _start) with @assemblyscript/wasi-shim.

let rngState: u64 = 0x6173_6f62_6a65_6374; // "asobject"

function rnd(): u64 {
  let x = rngState;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  rngState = x;
  return x;
}

function mix(h: u64, v: u64): u64 {
  let z = h ^ (v + 0x9e37_79b9_7f4a_7c15 + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58_476d_1ce4_e5b9;
  z = (z ^ (z >> 27)) * 0x94d0_49bb_1331_11eb;
  return z ^ (z >> 31);
}

class Vec {
  constructor(public x: i32, public y: i32) {}
}

class Particle {
  trail: Array<Vec> = new Array<Vec>();
  name: string;
  constructor(public id: i32, public pos: Vec, public vel: Vec) {
    this.name = "p" + id.toString();
  }

  step(): void {
    this.pos = new Vec(this.pos.x + this.vel.x, this.pos.y + this.vel.y);
    if (this.pos.x < 0 || this.pos.x > 100000) this.vel = new Vec(-this.vel.x, this.vel.y);
    if (this.pos.y < 0 || this.pos.y > 100000) this.vel = new Vec(this.vel.x, -this.vel.y);
    this.trail.push(this.pos);
    if (this.trail.length > 8) this.trail.shift();
  }

  digest(): u64 {
    let h: u64 = <u64>this.id;
    for (let i = 0; i < this.trail.length; i++) {
      const v = this.trail[i];
      h = h * 31 + <u64>(v.x * 7 + v.y);
    }
    return h ^ (<u64>this.name.length << 40);
  }
}

function newParticle(id: i32): Particle {
  const r = rnd();
  const pos = new Vec(<i32>(r & 0xffff), <i32>((r >> 16) & 0xffff));
  const vel = new Vec(<i32>((r >> 32) & 0x3ff) - 512, <i32>((r >> 42) & 0x3ff) - 512);
  return new Particle(id, pos, vel);
}

function parseArg(i: i32, def: i32): i32 {
  const argv = process.argv;
  if (argv.length <= i) return def;
  const v = I32.parseInt(argv[i]);
  if (isNaN(v) || v <= 0) {
    process.stderr.write("asobjects: bad numeric argument " + argv[i] + "\n");
    process.exit(2);
  }
  return <i32>v;
}

const steps = parseArg(1, 1000);
const count = parseArg(2, 2000);
console.log("asobjects: " + steps.toString() + " steps, " + count.toString() + " particles");

const particles = new Array<Particle>();
let nextId = 0;
for (let i = 0; i < count; i++) particles.push(newParticle(nextId++));

const cells = new Map<i32, i32>();
let h: u64 = 0;
const every = steps / 10 > 0 ? steps / 10 : 1;
for (let s = 1; s <= steps; s++) {
  for (let i = 0; i < particles.length; i++) {
    const p = particles[i];
    p.step();
    const cell = (p.pos.x >> 12) * 64 + (p.pos.y >> 12);
    cells.set(cell, cells.has(cell) ? cells.get(cell) + 1 : 1);
  }
  // Replace one particle in 16 (garbage for the collector).
  for (let k = 0; k < particles.length / 16; k++) {
    const j = <i32>(rnd() % <u64>particles.length);
    particles[j] = newParticle(nextId++);
  }
  for (let i = 0; i < particles.length; i++) h = mix(h, particles[i].digest());
  if (s % every == 0) {
    let c: u64 = 0;
    const keys = cells.keys();
    for (let i = 0; i < keys.length; i++) c = mix(c, (<u64>keys[i] << 32) | <u64>cells.get(keys[i]));
    h = mix(h, c);
    console.log("step " + s.toString() + " checksum " + h.toString(16) + " cells " + cells.size.toString());
  }
}
console.log("done " + steps.toString() + " steps, " + nextId.toString() + " particles made, checksum " + h.toString(16));
