/* sleeper: a process that mostly sleeps (blocked in poll_oneoff), for
 * migrating a process while it waits, and for stdin across migrations.
 *
 * usage: sleeper [K] [ms] [MB]   K rounds (default 20), sleeping ms (default 50)
 *                           each round with nanosleep; MB (default 0) of cold
 *                           data, filled at start, one page of it read a round
 *                           and all of it summed at the end (a process whose
 *                           pages are mostly left alone: demand paging's case)
 *        sleeper --echo     read stdin line by line until EOF and echo each
 *                           line transformed
 *
 * Round mode: each round computes a little (100000 mixing steps), prints
 * "tick N checksum X", then sleeps. Echo mode: for each line prints
 * "line N len L checksum X: TEXT" with TEXT upper-cased and reversed, X a
 * running checksum over all input so far; at EOF "eof after N lines
 * checksum X". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "common.h"

static int echo(void) {
  static char line[65536];
  uint32_t h = FNV32_INIT;
  unsigned long long n = 0;
  while (fgets(line, sizeof line, stdin)) {
    size_t len = strlen(line);
    h = fnv1a32_bytes(h, (const unsigned char *)line, len);
    if (len && line[len - 1] == '\n') line[--len] = 0;
    for (size_t i = 0; i < len / 2; i++) {
      char t = line[i];
      line[i] = line[len - 1 - i];
      line[len - 1 - i] = t;
    }
    for (size_t i = 0; i < len; i++)
      if (line[i] >= 'a' && line[i] <= 'z') line[i] = (char)(line[i] - 'a' + 'A');
    n++;
    printf("line %llu len %zu checksum %08x: %s\n", n, len, h, line);
    fflush(stdout);
  }
  printf("eof after %llu lines checksum %08x\n", n, h);
  return 0;
}

int main(int argc, char **argv) {
  line_buffered();
  if (argc >= 2 && strcmp(argv[1], "--echo") == 0) return echo();
  unsigned long long k = arg_u64(argc, argv, 1, 20);
  unsigned long long ms = arg_u64(argc, argv, 2, 50);
  unsigned long long mb = arg_u64(argc, argv, 3, 0);
  if (mb > 1024) {
    fprintf(stderr, "sleeper: MB must be at most 1024\n");
    return 2;
  }
  uint64_t s = 0x736c65657065720aull, h = 0;
  size_t words = (size_t)(mb << 20) / 8, page_words = 4096 / 8;
  uint64_t *cold = NULL;
  if (words) {
    cold = malloc(words * 8);
    if (!cold) {
      fprintf(stderr, "sleeper: out of memory\n");
      return 1;
    }
    uint64_t c = 0x636f6c64ull; /* "cold" */
    for (size_t w = 0; w < words; w++) cold[w] = xorshift64(&c);
    printf("sleeper: %llu rounds of %llu ms, %llu MB of cold data\n", k, ms, mb);
  } else
    printf("sleeper: %llu rounds of %llu ms\n", k, ms);
  fflush(stdout);
  for (unsigned long long i = 1; i <= k; i++) {
    if (words) h ^= cold[((i * 7919) * page_words) % words];
    for (int j = 0; j < 100000; j++) h = h * 31 + xorshift64(&s);
    printf("tick %llu checksum %016llx\n", i, (unsigned long long)h);
    fflush(stdout);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
  }
  if (words) {
    uint64_t c = 0;
    for (size_t w = 0; w < words; w++) c = c * 31 + cold[w];
    printf("cold data checksum %016llx\n", (unsigned long long)c);
  }
  printf("done %llu rounds checksum %016llx\n", k, (unsigned long long)h);
  return 0;
}
