/* Shared helpers for ferry's C workloads: deterministic PRNG and hashes.
 * Nothing here reads the clock or random_get: every run of a workload with
 * the same arguments prints the same bytes. */
#ifndef FERRY_WORKLOADS_COMMON_H
#define FERRY_WORKLOADS_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* xorshift64 (Marsaglia). State must be non-zero. */
static inline uint64_t xorshift64(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return x;
}

#define FNV32_INIT 0x811c9dc5u
#define FNV32_PRIME 0x01000193u

static inline uint32_t fnv1a32_u32(uint32_t h, uint32_t v) {
  for (int i = 0; i < 4; i++) {
    h ^= (v >> (8 * i)) & 0xffu;
    h *= FNV32_PRIME;
  }
  return h;
}

static inline uint32_t fnv1a32_bytes(uint32_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= FNV32_PRIME;
  }
  return h;
}

/* Order-dependent 64-bit mix (splitmix64 finalizer over h ^ v). */
static inline uint64_t mix64(uint64_t h, uint64_t v) {
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Line-buffer stdout (wasi-libc fully buffers it when it is not a tty), so
 * each progress line reaches the host when it is printed: tests watch for
 * them to pick a moment to migrate. */
static inline void line_buffered(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

/* Parse a non-negative decimal argument, or return def when absent. Exits
 * with status 2 on garbage so a typo never silently runs the default. */
static inline unsigned long long arg_u64(int argc, char **argv, int i, unsigned long long def) {
  if (i >= argc) return def;
  char *end = 0;
  unsigned long long v = strtoull(argv[i], &end, 10);
  if (end == argv[i] || *end != '\0') {
    fprintf(stderr, "bad numeric argument %d: '%s'\n", i, argv[i]);
    exit(2);
  }
  return v;
}

#endif
