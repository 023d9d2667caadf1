/* getpid: the thesis's "getpid" process. A tight loop of cheap system calls
 * over a tiny address space (one 64 KiB wasm page: ~56 KiB of it used by
 * data, stack and stdio buffers; no heap). Touches almost no memory, so a
 * migration of it is dominated by fixed costs.
 *
 * usage: getpid [iterations]   (default 1000000)
 *
 * Each iteration calls clock_res_get, fd_fdstat_get(stdout), fd_fdstat_get on
 * a closed fd (must fail with EBADF), args_sizes_get and sched_yield, and
 * folds their return codes and the host-independent parts of their results
 * (clock resolution > 0, argc; not stdout's file type, not the length of
 * argv[0]) into a running checksum together with the iteration number. Every 1/10 of
 * the run it prints the checksum: a resume that skips or repeats an
 * iteration prints a different line. */
#include <stdint.h>
#include <stdio.h>
#include <wasi/api.h>
#include "common.h"

int main(int argc, char **argv) {
  line_buffered();
  unsigned long long iters = arg_u64(argc, argv, 1, 1000000ull);
  unsigned long long every = iters / 10 ? iters / 10 : 1;
  uint64_t h = 0x6765747069640000ull; /* "getpid" */
  printf("getpid: %llu iterations\n", iters);
  for (unsigned long long i = 1; i <= iters; i++) {
    __wasi_timestamp_t res = 0;
    __wasi_errno_t e1 = __wasi_clock_res_get(__WASI_CLOCKID_MONOTONIC, &res);
    __wasi_fdstat_t st;
    __wasi_errno_t e2 = __wasi_fd_fdstat_get(1, &st);
    __wasi_fdstat_t st2;
    __wasi_errno_t e3 = __wasi_fd_fdstat_get(1000 + (i & 7), &st2);
    __wasi_size_t argc_n = 0, argv_sz = 0;
    __wasi_errno_t e4 = __wasi_args_sizes_get(&argc_n, &argv_sz);
    __wasi_errno_t e5 = __wasi_sched_yield();
    /* The clock resolution and stdout's file type may legitimately differ
     * between hosts: only fold in facts every correct host agrees on. */
    uint64_t v = (uint64_t)e1 | ((uint64_t)(res > 0) << 8) | ((uint64_t)e2 << 16) |
                 ((uint64_t)e3 << 24) | ((uint64_t)e4 << 32) | ((uint64_t)e5 << 40) |
                 ((uint64_t)argc_n << 48);
    (void)argv_sz;
    h = mix64(h, v ^ i);
    if (i % every == 0) printf("iter %llu checksum %016llx\n", i, (unsigned long long)h);
  }
  printf("done %llu checksum %016llx\n", iters, (unsigned long long)h);
  return 0;
}
