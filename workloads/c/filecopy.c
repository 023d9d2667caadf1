/* filecopy: a file copier that keeps its files open for its whole run, so a
 * migration must carry open file descriptors, their offsets and stdio's
 * buffers.
 *
 * usage: filecopy SRC DST [chunk] [work]   copy SRC to DST
 *        filecopy --gen PATH [MB]          write a deterministic input file
 *                                          (default 8 MB)
 * chunk: bytes per fread/fwrite (default 4096); work: extra mixing rounds per
 * byte (default 16), to make the copy take a while.
 *
 * Copy: SRC is opened with fopen("rb"), DST with open(O_CREAT|O_TRUNC|O_RDWR)
 * and fdopen'd. The size of SRC is found with lseek(SEEK_END) and then
 * lseek(SEEK_SET) back. DST starts with a 16-byte header (magic "FERRYCPY",
 * then the byte count and the checksum, filled in at the end with lseek +
 * write). Each chunk is read with fread, each byte is transformed
 * (out = in ^ low byte of a running state that evolves with every byte and
 * `work` extra rounds) and the result written with fwrite. Every 16th chunk a
 * pread() at a computed offset of SRC (which must not move SRC's offset)
 * folds 8 bytes into the checksum. Progress lines every 1/10 of the file. At
 * the end DST is reopened for reading, its body checksummed and compared with
 * the header ("verify ok"). Exit status 1 on any I/O error or mismatch. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common.h"

#define HEADER 16

static int die(const char *what, const char *path) {
  fprintf(stderr, "filecopy: %s %s: %s\n", what, path ? path : "", strerror(errno));
  printf("FAIL %s %s\n", what, path ? path : "");
  return 1;
}

static int gen(const char *path, unsigned long long mb) {
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) return die("open", path);
  uint64_t s = 0x66696c65636f7079ull; /* "filecopy" */
  static unsigned char block[65536];
  uint32_t h = FNV32_INIT;
  for (unsigned long long i = 0; i < mb * 16; i++) {
    for (size_t j = 0; j < sizeof block; j += 8) {
      uint64_t x = xorshift64(&s);
      /* Some runs of zeros and text-like bytes, not only noise. */
      if ((x & 0xf00) == 0) x = 0;
      else if ((x & 0xf00) == 0x100) x &= 0x3f3f3f3f3f3f3f3full, x |= 0x4040404040404040ull;
      memcpy(block + j, &x, 8);
    }
    h = fnv1a32_bytes(h, block, sizeof block);
    size_t off = 0;
    while (off < sizeof block) {
      ssize_t w = write(fd, block + off, sizeof block - off);
      if (w < 0) return die("write", path);
      off += (size_t)w;
    }
  }
  if (close(fd) != 0) return die("close", path);
  printf("generated %s: %llu MB checksum %08x\n", path, mb, h);
  return 0;
}

static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int copy(const char *src, const char *dst, size_t chunk, unsigned work) {
  FILE *in = fopen(src, "rb");
  if (!in) return die("fopen", src);
  int infd = fileno(in);
  off_t size = lseek(infd, 0, SEEK_END);
  if (size < 0 || lseek(infd, 0, SEEK_SET) != 0) return die("lseek", src);
  int outfd = open(dst, O_CREAT | O_TRUNC | O_RDWR, 0644);
  if (outfd < 0) return die("open", dst);
  FILE *out = fdopen(outfd, "wb");
  if (!out) return die("fdopen", dst);
  unsigned char header[HEADER] = {'F', 'E', 'R', 'R', 'Y', 'C', 'P', 'Y'};
  if (fwrite(header, 1, HEADER, out) != HEADER) return die("fwrite", dst);

  unsigned char *buf = malloc(chunk);
  if (!buf) return die("malloc", 0);
  printf("copy %s -> %s: %lld bytes, chunk %zu, work %u\n", src, dst, (long long)size, chunk,
         work);
  uint32_t state = 0x12345678u, h = FNV32_INIT, side = FNV32_INIT;
  unsigned long long copied = 0, nchunk = 0;
  unsigned long long every = (unsigned long long)size / 10;
  if (every < chunk) every = chunk;
  unsigned long long next = every;
  for (;;) {
    size_t n = fread(buf, 1, chunk, in);
    if (n == 0) {
      if (ferror(in)) return die("fread", src);
      break;
    }
    for (size_t i = 0; i < n; i++) {
      uint32_t b = buf[i];
      state = (state ^ b) * 0x01000193u;
      for (unsigned r = 0; r < work; r++) state = (state << 3 | state >> 29) + 0x9e3779b9u;
      buf[i] = (unsigned char)(b ^ state);
      h = (h ^ buf[i]) * FNV32_PRIME;
    }
    if (fwrite(buf, 1, n, out) != n) return die("fwrite", dst);
    copied += n;
    nchunk++;
    if (nchunk % 16 == 0 && size >= 8) {
      unsigned char probe[8];
      off_t at = (off_t)((nchunk * 2654435761ull) % (unsigned long long)(size - 7));
      if (pread(infd, probe, 8, at) != 8) return die("pread", src);
      side = fnv1a32_bytes(side, probe, 8);
    }
    if (copied >= next) {
      printf("copied %llu checksum %08x side %08x\n", copied, h, side);
      next += every;
    }
  }
  if ((off_t)copied != size) {
    printf("FAIL copied %llu of %lld bytes\n", copied, (long long)size);
    return 1;
  }
  /* Fill in the header: flush stdio, then seek the raw fd back to 8. */
  if (fflush(out) != 0) return die("fflush", dst);
  unsigned char tail[8];
  put_u32(tail, (uint32_t)copied);
  put_u32(tail + 4, h);
  if (lseek(outfd, 8, SEEK_SET) != 8) return die("lseek", dst);
  if (write(outfd, tail, 8) != 8) return die("write", dst);
  if (fclose(out) != 0) return die("fclose", dst);
  if (fclose(in) != 0) return die("fclose", src);

  /* Verify what landed on disk. */
  FILE *v = fopen(dst, "rb");
  if (!v) return die("fopen", dst);
  unsigned char hd[HEADER];
  if (fread(hd, 1, HEADER, v) != HEADER) return die("fread", dst);
  uint32_t vh = FNV32_INIT;
  unsigned long long vn = 0;
  size_t n;
  while ((n = fread(buf, 1, chunk, v)) > 0) {
    vh = fnv1a32_bytes(vh, buf, n);
    vn += n;
  }
  fclose(v);
  free(buf);
  if (memcmp(hd, "FERRYCPY", 8) != 0 || get_u32(hd + 8) != (uint32_t)vn || get_u32(hd + 12) != vh ||
      vh != h) {
    printf("FAIL verify: header says %u bytes %08x, file has %llu bytes %08x\n", get_u32(hd + 8),
           get_u32(hd + 12), vn, vh);
    return 1;
  }
  printf("done %llu bytes checksum %08x side %08x verify ok\n", copied, h, side);
  return 0;
}

int main(int argc, char **argv) {
  line_buffered();
  if (argc >= 3 && strcmp(argv[1], "--gen") == 0)
    return gen(argv[2], arg_u64(argc, argv, 3, 8));
  if (argc < 3) {
    fprintf(stderr, "usage: filecopy SRC DST [chunk] [work]\n       filecopy --gen PATH [MB]\n");
    return 2;
  }
  unsigned long long chunk = arg_u64(argc, argv, 3, 4096);
  unsigned long long work = arg_u64(argc, argv, 4, 16);
  if (chunk == 0 || chunk > (1u << 24)) {
    fprintf(stderr, "filecopy: chunk must be in 1..16777216\n");
    return 2;
  }
  return copy(argv[1], argv[2], (size_t)chunk, (unsigned)work);
}
