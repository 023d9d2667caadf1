/* pageinc: QEMU's migration test guest, as a WASI program. A buffer of N MB,
 * 4 KiB aligned; each pass increments the first byte of every 4 KiB page,
 * checking each byte before it increments it. If the buffer was moved
 * correctly every such byte equals the pass number (mod 256) when it is
 * reached; a page that a migration lost, duplicated, shipped stale or put at
 * the wrong address breaks the invariant at its next visit.
 *
 * usage: pageinc [MB] [passes]   (defaults 16 and 5000)
 *
 * Page layout (offsets in each 4 KiB page of the buffer):
 *   0       counter byte: (pass number mod 256) before the page's visit
 *   8..11   the page's index (little endian), written once at start
 *   others  zero; one of them, moving with the pass, is checked each pass
 * Between visits the invariant seen from outside is: the counter bytes of
 * pages [0, i) equal those of pages [i, n) plus one (mod 256), for the page i
 * being visited. The start line prints the buffer's address and page count
 * so a test can check that in a captured memory image too.
 *
 * Prints "ok pass K" every 1/20 of the run and "done" at the end; on a broken
 * invariant prints "FAIL ..." (stdout and stderr) and exits with status 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

#define PAGE 4096u

static void fail(const char *what, unsigned long long pass, size_t page, unsigned got,
                 unsigned want) {
  printf("FAIL %s: pass %llu page %zu got %u want %u\n", what, pass, page, got, want);
  fflush(stdout);
  fprintf(stderr, "pageinc: FAIL %s: pass %llu page %zu got %u want %u\n", what, pass, page,
          got, want);
  exit(1);
}

int main(int argc, char **argv) {
  line_buffered();
  unsigned long long mb = arg_u64(argc, argv, 1, 16);
  unsigned long long passes = arg_u64(argc, argv, 2, 5000);
  if (mb == 0 || mb > 3072) {
    fprintf(stderr, "pageinc: MB must be in 1..3072\n");
    return 2;
  }
  size_t pages = (size_t)(mb * 1024 * 1024 / PAGE);
  unsigned char *buf = aligned_alloc(PAGE, pages * PAGE);
  if (!buf) {
    fprintf(stderr, "pageinc: cannot allocate %llu MB\n", mb);
    return 1;
  }
  memset(buf, 0, pages * PAGE);
  for (size_t i = 0; i < pages; i++) {
    uint32_t v = (uint32_t)i;
    memcpy(buf + i * PAGE + 8, &v, 4);
  }
  unsigned long long every = passes / 20 ? passes / 20 : 1;
  printf("pageinc: %llu MB, %zu pages at 0x%08lx, %llu passes\n", mb, pages,
         (unsigned long)(uintptr_t)buf, passes);
  for (unsigned long long p = 0; p < passes; p++) {
    unsigned char want = (unsigned char)p;
    /* One other byte per page, outside the counter and the index. */
    size_t probe = 12 + (size_t)((p * 2654435761ull) % (PAGE - 12));
    for (size_t i = 0; i < pages; i++) {
      unsigned char *pg = buf + i * PAGE;
      if (pg[0] != want) fail("counter", p, i, pg[0], want);
      pg[0] = (unsigned char)(want + 1);
      if (pg[probe] != 0) fail("zero byte", p, i, pg[probe], 0);
    }
    /* Index words: checked on a stride that covers every page in 8 passes. */
    for (size_t i = (size_t)(p & 7); i < pages; i += 8) {
      uint32_t v;
      memcpy(&v, buf + i * PAGE + 8, 4);
      if (v != (uint32_t)i) fail("page index", p, i, v, (unsigned)i);
    }
    if ((p + 1) % every == 0) printf("ok pass %llu\n", p + 1);
  }
  /* Final full check. */
  for (size_t i = 0; i < pages; i++) {
    unsigned char *pg = buf + i * PAGE;
    if (pg[0] != (unsigned char)passes) fail("final counter", passes, i, pg[0], (unsigned char)passes);
    for (size_t j = 12; j < PAGE; j++)
      if (pg[j] != 0) fail("final zero byte", passes, i, pg[j], 0);
  }
  printf("done %llu passes over %zu pages\n", passes, pages);
  return 0;
}
