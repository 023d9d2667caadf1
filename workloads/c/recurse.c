/* recurse: deep recursion, thousands of wasm frames on the stack at once.
 *
 * usage: recurse [depth] [repeats]   (defaults 5000 and 12000)
 *
 * Each repeat runs four recursions of the given depth and folds their
 * results into a checksum:
 *   chain     one function, no loop in it, not a tail call (a stop needs a
 *             safe point at function entry)
 *   pingpong  two mutually recursive functions, no loops
 *   looped    a recursive function with a small loop at each level
 *   framed    a recursive function with an on-stack array whose address
 *             escapes, so it uses the linear-memory shadow stack (the
 *             __stack_pointer global moves); depth/4 of it
 * Plus, once, Ackermann(2, depth/4) and Ackermann(3, 7) with a call count.
 * Prints a checksum every 1/10 of the repeats and at the end. */
#include <stdint.h>
#include <stdio.h>
#include "common.h"

#define NOINLINE __attribute__((noinline))

static volatile uint32_t sink;

/* No loop; the recursive call is not in tail position and its result is
 * transformed non-associatively, so clang cannot turn it into a loop. */
NOINLINE static uint32_t chain(uint32_t d, uint32_t x) {
  if (d == 0) return x ^ 0x9e3779b9u;
  uint32_t r = chain(d - 1, x * 1664525u + 1013904223u);
  return (r ^ (r >> 13)) * 0x5bd1e995u + d;
}

NOINLINE static uint32_t pong(uint32_t d, uint32_t x);
NOINLINE static uint32_t ping(uint32_t d, uint32_t x) {
  if (d == 0) return x;
  uint32_t r = pong(d - 1, x + d);
  return (r << 7 | r >> 25) ^ x;
}
NOINLINE static uint32_t pong(uint32_t d, uint32_t x) {
  if (d == 0) return ~x;
  uint32_t r = ping(d - 1, x ^ (d * 0x85ebca6bu));
  return r * 3u + (x >> 3);
}

NOINLINE static uint32_t looped(uint32_t d, uint32_t x) {
  uint32_t acc = x;
  for (uint32_t k = 0; k < (d & 7) + 1; k++) acc = acc * 0x27d4eb2du + k;
  if (d == 0) return acc;
  uint32_t r = looped(d - 1, acc);
  return r ^ (acc >> 11);
}

NOINLINE static void scramble(uint32_t *p, int n, uint32_t seed) {
  for (int i = 0; i < n; i++) p[i] = seed = seed * 747796405u + 2891336453u;
}

NOINLINE static uint32_t framed(uint32_t d, uint32_t x) {
  uint32_t local[8];
  scramble(local, 8, x);
  uint32_t r = d == 0 ? x : framed(d - 1, local[d & 7]);
  /* Read the array after the call: it must have survived on the stack. */
  return r + local[0] - local[7] + (local[(d + 3) & 7] >> 5);
}

static unsigned long long ack_calls;
NOINLINE static uint32_t ack(uint32_t m, uint32_t n) {
  ack_calls++;
  if (m == 0) return n + 1;
  if (n == 0) return ack(m - 1, 1);
  return ack(m - 1, ack(m, n - 1));
}

int main(int argc, char **argv) {
  line_buffered();
  unsigned long long depth = arg_u64(argc, argv, 1, 5000);
  unsigned long long repeats = arg_u64(argc, argv, 2, 12000);
  unsigned long long every = repeats / 10 ? repeats / 10 : 1;
  printf("recurse: depth %llu, %llu repeats\n", depth, repeats);
  uint64_t h = 0x7265637572736500ull;
  uint32_t d = (uint32_t)depth;
  for (unsigned long long i = 1; i <= repeats; i++) {
    uint32_t x = (uint32_t)mix64(h, i);
    uint32_t c = chain(d, x);
    uint32_t p = ping(d, c);
    uint32_t l = looped(d, p);
    uint32_t f = framed(d / 4, l);
    h = mix64(h, ((uint64_t)c << 32 | p) ^ ((uint64_t)l << 16) ^ f);
    if (i % every == 0) printf("repeat %llu checksum %016llx\n", i, (unsigned long long)h);
  }
  uint32_t an = d / 4;
  uint32_t a2 = ack(2, an);
  unsigned long long c2 = ack_calls;
  ack_calls = 0;
  uint32_t a3 = ack(3, 7);
  printf("ack(2,%u) = %u (%llu calls), ack(3,7) = %u (%llu calls)\n", an, a2, c2, a3, ack_calls);
  h = mix64(h, (uint64_t)a2 << 32 | a3);
  printf("done checksum %016llx\n", (unsigned long long)h);
  sink = (uint32_t)h;
  return 0;
}
