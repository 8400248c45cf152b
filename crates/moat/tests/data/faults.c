/* An LD_PRELOAD library for moat's store tests (issue #35): the Nth call
 * (counted over the process) of the I/O kind named by MOAT_FAULT
 * ("write": write/pwrite/pwrite64; "fsync": fsync/fdatasync) fails with
 * EIO, or with ENOSPC when MOAT_FAULT_ERRNO=28; MOAT_FAULT_AT=N picks it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static long calls;

static int fail(const char *kind) {
    const char *k = getenv("MOAT_FAULT"), *at = getenv("MOAT_FAULT_AT"), *e = getenv("MOAT_FAULT_ERRNO");
    if (!k || !at || strcmp(k, kind) != 0) return 0;
    if (__atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST) != atol(at)) return 0;
    errno = e ? atoi(e) : EIO;
    return 1;
}

ssize_t write(int fd, const void *b, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = dlsym(RTLD_NEXT, "write");
    if (fd > 2 && fail("write")) return -1;
    return real(fd, b, n);
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pwrite");
    if (fail("write")) return -1;
    return real(fd, b, n, o);
}

ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pwrite64");
    if (fail("write")) return -1;
    return real(fd, b, n, o);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fsync");
    if (fail("fsync")) return -1;
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
    if (fail("fsync")) return -1;
    return real(fd);
}
