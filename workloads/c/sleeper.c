/* sleeper: a process that mostly sleeps (blocked in poll_oneoff), for
 * migrating a process while it waits, and for stdin across migrations.
 *
 * usage: sleeper [K] [ms]   K rounds (default 20), sleeping ms (default 50)
 *                           each round with nanosleep
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
  uint64_t s = 0x736c65657065720aull, h = 0;
  printf("sleeper: %llu rounds of %llu ms\n", k, ms);
  fflush(stdout);
  for (unsigned long long i = 1; i <= k; i++) {
    for (int j = 0; j < 100000; j++) h = h * 31 + xorshift64(&s);
    printf("tick %llu checksum %016llx\n", i, (unsigned long long)h);
    fflush(stdout);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
  }
  printf("done %llu rounds checksum %016llx\n", k, (unsigned long long)h);
  return 0;
}
