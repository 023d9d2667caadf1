/* reference: the thesis's reference process. A 100 KB static array (in the
 * module's BSS); each pass writes every word of it, so every page is dirtied
 * every pass, and computes along the way.
 *
 * usage: reference [passes]   (default 6000)
 *
 * Pass p updates a[i] from a[i], its left neighbour's new value and p, so the
 * contents depend on every pass in order. Every 1/10 of the run it prints an
 * FNV checksum of the whole array; at the end the final checksum. */
#include <stdint.h>
#include <stdio.h>
#include "common.h"

#define WORDS (100 * 1024 / 4)
static uint32_t a[WORDS];

int main(int argc, char **argv) {
  line_buffered();
  unsigned long long passes = arg_u64(argc, argv, 1, 6000);
  unsigned long long every = passes / 10 ? passes / 10 : 1;
  uint64_t s = 0x7265666572656e63ull; /* "referenc" */
  for (int i = 0; i < WORDS; i++) a[i] = (uint32_t)xorshift64(&s);
  printf("reference: %d KB, %llu passes\n", (int)(sizeof a / 1024), passes);
  uint32_t prev = 0;
  for (unsigned long long p = 1; p <= passes; p++) {
    uint32_t k = (uint32_t)p * 2654435761u;
    for (int i = 0; i < WORDS; i++) {
      uint32_t v = a[i];
      v ^= prev + k;
      v = (v << 5) | (v >> 27);
      v = v * 0x27d4eb2du + (uint32_t)i;
      a[i] = v;
      prev = v;
    }
    if (p % every == 0) {
      uint32_t h = fnv1a32_bytes(FNV32_INIT, (const unsigned char *)a, sizeof a);
      printf("pass %llu checksum %08x\n", p, h);
    }
  }
  uint32_t h = fnv1a32_bytes(FNV32_INIT, (const unsigned char *)a, sizeof a);
  printf("done %llu passes checksum %08x\n", passes, h);
  return 0;
}
