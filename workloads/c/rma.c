/* rma: the thesis's RMA process. Random memory access: random 32-bit writes
 * all over a heap region as fast as possible, so nearly every page is dirty
 * all the time (the case where pre-copy fails to converge).
 *
 * usage: rma [MB] [writes-in-millions]   (defaults 4 and 200)
 *
 * The region is malloc'd (the module grows its memory at start). Each write
 * is a read-modify-write of a word picked by xorshift, so the final contents
 * depend on the order of every write. Every 1/10 of the run it prints an FNV
 * checksum of a 1/64 sample of the words; at the end an FNV checksum of the
 * whole region. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "common.h"

int main(int argc, char **argv) {
  line_buffered();
  unsigned long long mb = arg_u64(argc, argv, 1, 4);
  unsigned long long millions = arg_u64(argc, argv, 2, 200);
  if (mb == 0 || mb > 3072) {
    fprintf(stderr, "rma: MB must be in 1..3072\n");
    return 2;
  }
  size_t words = (size_t)(mb * 1024 * 1024 / 4);
  uint32_t *mem = malloc(words * 4);
  if (!mem) {
    fprintf(stderr, "rma: cannot allocate %llu MB\n", mb);
    return 1;
  }
  memset(mem, 0, words * 4);
  uint32_t mask = 0;
  int pow2 = (words & (words - 1)) == 0;
  if (pow2) mask = (uint32_t)(words - 1);
  unsigned long long total = millions * 1000000ull;
  unsigned long long every = total / 10 ? total / 10 : 1;
  uint64_t s = 0x524d41ull * 0x9e3779b97f4a7c15ull; /* "RMA" */
  printf("rma: %llu MB, %llu writes\n", mb, total);
  unsigned long long done = 0;
  while (done < total) {
    unsigned long long n = total - done < every ? total - done : every;
    for (unsigned long long k = 0; k < n; k++) {
      uint64_t x = xorshift64(&s);
      uint32_t idx = pow2 ? ((uint32_t)(x >> 20) & mask) : (uint32_t)((x >> 20) % words);
      mem[idx] = mem[idx] * 31u + (uint32_t)x;
    }
    done += n;
    uint32_t h = FNV32_INIT;
    for (size_t i = 0; i < words; i += 64) h = fnv1a32_u32(h, mem[i]);
    printf("writes %llu sample %08x\n", done, h);
  }
  uint32_t h = fnv1a32_bytes(FNV32_INIT, (const unsigned char *)mem, words * 4);
  printf("done %llu writes checksum %08x\n", done, h);
  free(mem);
  return 0;
}
