/* An LD_PRELOAD library for moat's power-cut test (issue #35). It keeps an
 * undo log of every write that has not reached the disk yet, so that the
 * test can put each file back as a power cut would leave it: what was
 * written since the file's last fsync/fdatasync (or the filesystem's last
 * sync/syncfs) is dropped; what was synced stays.
 *
 *   MOAT_POWERCUT_LOG=FILE    the log (appended under flock by every process)
 *   MOAT_POWERCUT_UNDER=DIR   only regular files under DIR are logged
 *                             (SQLite's -shm, rebuilt on open, is not)
 *   MOAT_POWERCUT_AT=N        the Nth logged write of a process is the cut:
 *                             the process SIGKILLs itself before it
 *
 * Records: "U <offset> <old size> <len> <path len>\n<path><old bytes>"
 * before a write; "S <path len>\n<path>" after an fsync/fdatasync;
 * "A\n" after sync/syncfs; "R <old len> <new len>\n<old><new>" after a
 * rename (metadata is taken as durable: the test follows renames).
 * Writes made through other calls (mmap, copy_file_range) are not seen. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static long writes;

static void raw_all(int fd, const void *b, size_t n) {
    const char *p = b;
    while (n > 0) {
        long r = syscall(SYS_write, fd, p, n);
        if (r <= 0) return;
        p += r;
        n -= (size_t)r;
    }
}

/* Appends one record (head, then up to two byte strings) to the log. */
static void record(const char *head, const void *a, size_t an, const void *b, size_t bn) {
    const char *log = getenv("MOAT_POWERCUT_LOG");
    if (!log) return;
    int saved = errno;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        flock(fd, LOCK_EX);
        raw_all(fd, head, strlen(head));
        if (an) raw_all(fd, a, an);
        if (bn) raw_all(fd, b, bn);
        close(fd);
    }
    errno = saved;
}

/* The path of fd if it is a regular file under MOAT_POWERCUT_UNDER. */
static int logged_path(int fd, char *path) {
    const char *under = getenv("MOAT_POWERCUT_UNDER");
    struct stat st;
    if (!under || fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, PATH_MAX - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    size_t ul = strlen(under);
    if (strncmp(path, under, ul) != 0 || (path[ul] != '/' && path[ul] != 0)) return 0;
    if (n > 4 && strcmp(path + n - 4, "-shm") == 0) return 0;
    return 1;
}

static void before_write(int fd, size_t len, off_t off, int positional) {
    char path[PATH_MAX];
    if (!logged_path(fd, path)) return;
    long at = getenv("MOAT_POWERCUT_AT") ? atol(getenv("MOAT_POWERCUT_AT")) : 0;
    if (__atomic_add_fetch(&writes, 1, __ATOMIC_SEQ_CST) == at) kill(getpid(), SIGKILL);
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (!positional) {
        int fl = fcntl(fd, F_GETFL);
        off = (fl >= 0 && (fl & O_APPEND)) ? st.st_size : lseek(fd, 0, SEEK_CUR);
        if (off < 0) return;
    }
    size_t old = 0;
    if (off < st.st_size) old = (size_t)(st.st_size - off) < len ? (size_t)(st.st_size - off) : len;
    char *buf = old ? malloc(old) : NULL;
    if (old && (!buf || pread(fd, buf, old, off) != (ssize_t)old)) {
        free(buf);
        return;
    }
    char head[128];
    snprintf(head, sizeof head, "U %lld %lld %zu %zu\n", (long long)off, (long long)st.st_size, old, strlen(path));
    record(head, path, strlen(path), buf, old);
    free(buf);
}

static void synced(int fd) {
    char path[PATH_MAX];
    if (!logged_path(fd, path)) return;
    char head[64];
    snprintf(head, sizeof head, "S %zu\n", strlen(path));
    record(head, path, strlen(path), NULL, 0);
}

#define REAL(ret, name, ...)                                  \
    static ret (*real)(__VA_ARGS__);                          \
    if (!real) real = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, name)

ssize_t write(int fd, const void *b, size_t n) {
    REAL(ssize_t, "write", int, const void *, size_t);
    if (fd > 2) before_write(fd, n, 0, 0);
    return real(fd, b, n);
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
    REAL(ssize_t, "pwrite", int, const void *, size_t, off_t);
    before_write(fd, n, o, 1);
    return real(fd, b, n, o);
}

ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) {
    REAL(ssize_t, "pwrite64", int, const void *, size_t, off_t);
    before_write(fd, n, o, 1);
    return real(fd, b, n, o);
}

int fsync(int fd) {
    REAL(int, "fsync", int);
    int r = real(fd);
    if (r == 0) synced(fd);
    return r;
}

int fdatasync(int fd) {
    REAL(int, "fdatasync", int);
    int r = real(fd);
    if (r == 0) synced(fd);
    return r;
}

void sync(void) {
    REAL(void, "sync", void);
    real();
    record("A\n", NULL, 0, NULL, 0);
}

int syncfs(int fd) {
    REAL(int, "syncfs", int);
    int r = real(fd);
    if (r == 0) record("A\n", NULL, 0, NULL, 0);
    return r;
}

#define LONG_PATH (2 * PATH_MAX + 2)

/* Absolute form of a path relative to dirfd (AT_FDCWD or a directory);
 * out holds LONG_PATH bytes. */
static int absolute(int dirfd, const char *p, char *out) {
    if (p[0] == '/') {
        snprintf(out, LONG_PATH, "%s", p);
        return 1;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n <= 0) return 0;
        base[n] = 0;
    }
    snprintf(out, LONG_PATH, "%s/%s", base, p);
    return 1;
}

static void renamed(int od, const char *o, int nd, const char *n) {
    char a[LONG_PATH], b[LONG_PATH];
    if (!getenv("MOAT_POWERCUT_UNDER") || !absolute(od, o, a) || !absolute(nd, n, b)) return;
    char head[64];
    snprintf(head, sizeof head, "R %zu %zu\n", strlen(a), strlen(b));
    record(head, a, strlen(a), b, strlen(b));
}

int rename(const char *o, const char *n) {
    REAL(int, "rename", const char *, const char *);
    int r = real(o, n);
    if (r == 0) renamed(AT_FDCWD, o, AT_FDCWD, n);
    return r;
}

int renameat(int od, const char *o, int nd, const char *n) {
    REAL(int, "renameat", int, const char *, int, const char *);
    int r = real(od, o, nd, n);
    if (r == 0) renamed(od, o, nd, n);
    return r;
}

int renameat2(int od, const char *o, int nd, const char *n, unsigned flags) {
    REAL(int, "renameat2", int, const char *, int, const char *, unsigned);
    int r = real(od, o, nd, n, flags);
    if (r == 0) renamed(od, o, nd, n);
    return r;
}
