/* The services bench's connect() client (bench/services.py compiles it with `cc -O2` at run time and runs it
 * inside the client endpoint): a Python client's own cost per connect (~150-200 us) hid the datapath's.
 *
 *   connect_client COUNT SEED [PROCS]   targets on stdin, one "IPv4 PORT [CLASS]" per line
 *
 * Each of PROCS processes (default 1) makes 50 warm-up connects, then COUNT sequential connect()s to targets
 * picked at random (a splitmix64 PRNG seeded with SEED + process index), each socket closed with SO_LINGER 0
 * (an RST: no TIME_WAIT piles up) and each connect() timed with CLOCK_MONOTONIC. The processes start their
 * measured connects together (a pipe barrier). Prints one JSON object, the shape bench/services.py reads:
 *   {"lat_ns": [...], "errors": E, "seconds": wall of the measured part, "cpu_seconds": the processes' CPU,
 *    "procs": PROCS, "client": "c"}
 * A failed connect (refused, unreachable, 3 s timeout) counts as an error, not as a latency.
 * Paired mode: when the targets carry a CLASS (0 or 1; e.g. service VIPs and the backends' own addresses), the
 * connects alternate between the classes, one of each in turn (a random target of the class each time), and
 * the JSON gains "cls": the class of each latency, in the same order. Both classes then see the same moments
 * of the machine: on a shared machine, load drifting between two separate runs moves one class's figures and
 * not the other's; here it moves both alike. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 50
#define MAX_PROCS 64

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One connect: its latency in ns, or -1 when it failed. */
static int64_t one(const struct sockaddr_in *to) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    struct timeval tmo = {.tv_sec = 3, .tv_usec = 0}; /* bounds a blocking connect() on Linux */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tmo, sizeof(tmo));
    int64_t a = now_ns();
    int rc = connect(fd, (const struct sockaddr *)to, sizeof(*to));
    int64_t d = now_ns() - a;
    close(fd);
    return rc == 0 ? d : -1;
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* A worker: warm up, wait at the barrier, run, send [errors, latencies...] as int64 to out_fd. */
static int worker(const struct sockaddr_in *t, size_t nt, const int *cls, long count, uint64_t seed, int ready_fd,
                  int go_fd, int out_fd) {
    struct sockaddr_in *order = malloc(sizeof(*order) * (size_t)count);
    int64_t *lat = malloc(sizeof(*lat) * (size_t)(2 * count + 1));
    int *ocls = malloc(sizeof(*ocls) * (size_t)count);
    if (!order || !lat || !ocls)
        return 1;
    size_t by[2] = {0, 0}; /* targets per class */
    for (size_t k = 0; k < nt; k++)
        if (cls[k] >= 0)
            by[cls[k]]++;
    int paired = by[0] && by[1];
    for (long i = 0; i < count; i++) {
        if (!paired) {
            order[i] = t[splitmix64(&seed) % nt];
            ocls[i] = cls[0];
            continue;
        }
        int c = (int)(i & 1); /* alternate the classes; a random target of the class */
        size_t pick = splitmix64(&seed) % by[c], k = 0;
        for (;; k++)
            if (cls[k] == c && pick-- == 0)
                break;
        order[i] = t[k];
        ocls[i] = c;
    }
    for (long i = 0; i < WARMUP && i < count; i++)
        one(&order[i]);
    char c = 1;
    if (ready_fd >= 0 && (write_all(ready_fd, &c, 1) || read(go_fd, &c, 1) < 0))
        return 1;
    int64_t errors = 0, n = 0;
    for (long i = 0; i < count; i++) {
        int64_t d = one(&order[i]);
        if (d < 0)
            errors++;
        else {
            lat[1 + 2 * n] = d;
            lat[2 + 2 * n++] = ocls[i];
        }
    }
    lat[0] = errors;
    int64_t hdr = n; /* then errors, and n (latency, class) pairs */
    if (write_all(out_fd, &hdr, sizeof(hdr)) || write_all(out_fd, lat, sizeof(*lat) * (size_t)(2 * n + 1)))
        return 1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s COUNT SEED [PROCS] < targets (IPv4 PORT [CLASS] per line)\n", argv[0]);
        return 2;
    }
    long count = strtol(argv[1], NULL, 10);
    uint64_t seed = strtoull(argv[2], NULL, 10);
    long procs = argc > 3 ? strtol(argv[3], NULL, 10) : 1;
    if (count < 1 || procs < 1 || procs > MAX_PROCS) {
        fprintf(stderr, "COUNT must be >= 1 and PROCS 1..%d\n", MAX_PROCS);
        return 2;
    }
    size_t cap = 1024, nt = 0;
    struct sockaddr_in *t = malloc(sizeof(*t) * cap);
    int *cls = malloc(sizeof(*cls) * cap);
    char ip[64], line[256];
    unsigned port;
    int with_cls = -1; /* every line has a class, or none has */
    while (t && cls && fgets(line, sizeof(line), stdin)) {
        int c = -1, got = sscanf(line, "%63s %u %d", ip, &port, &c);
        if (got <= 0)
            continue;
        if (got < 2 || (got == 3 && c != 0 && c != 1) || (with_cls >= 0 && with_cls != (got == 3))) {
            fprintf(stderr, "bad target line (IPv4 PORT [CLASS 0|1], the same on every line): %s", line);
            return 2;
        }
        with_cls = got == 3;
        if (nt == cap) {
            cap *= 2;
            if (!(t = realloc(t, sizeof(*t) * cap)) || !(cls = realloc(cls, sizeof(*cls) * cap)))
                break;
        }
        cls[nt] = got == 3 ? c : -1;
        memset(&t[nt], 0, sizeof(*t));
        t[nt].sin_family = AF_INET;
        t[nt].sin_port = htons((uint16_t)port);
        if (port > 65535 || inet_pton(AF_INET, ip, &t[nt].sin_addr) != 1) {
            fprintf(stderr, "bad target line: %s %u\n", ip, port);
            return 2;
        }
        nt++;
    }
    if (!t || !cls || nt == 0) {
        fprintf(stderr, "no targets on stdin\n");
        return 2;
    }
    int ready[2], go[2], out[MAX_PROCS][2];
    pid_t pid[MAX_PROCS];
    if (pipe(ready) || pipe(go))
        return 1;
    for (long p = 0; p < procs; p++) {
        if (pipe(out[p]))
            return 1;
        pid[p] = fork();
        if (pid[p] < 0)
            return 1;
        if (pid[p] == 0) {
            close(go[1]);
            close(out[p][0]);
            _exit(worker(t, nt, cls, count, seed + (uint64_t)p, ready[1], go[0], out[p][1]));
        }
        close(out[p][1]);
    }
    close(go[0]);
    char c;
    for (long p = 0; p < procs; p++)
        if (read_all(ready[0], &c, 1))
            return 1;
    int64_t t0 = now_ns();
    close(go[1]); /* every worker's read(go) returns 0: go */
    int64_t errors = 0, total = 0;
    int64_t *all = NULL; /* (latency, class) pairs of every worker */
    for (long p = 0; p < procs; p++) {
        int64_t n;
        if (read_all(out[p][0], &n, sizeof(n)))
            return 1;
        int64_t *lat = malloc(sizeof(*lat) * (size_t)(2 * n + 1));
        if (!lat || read_all(out[p][0], lat, sizeof(*lat) * (size_t)(2 * n + 1)))
            return 1;
        errors += lat[0];
        if (!(all = realloc(all, sizeof(*all) * (size_t)(2 * (total + n) + 1))))
            return 1;
        memcpy(all + 2 * total, lat + 1, sizeof(*lat) * (size_t)(2 * n));
        total += n;
        free(lat);
    }
    int64_t t1 = now_ns();
    printf("{\"lat_ns\": [");
    for (int64_t i = 0; i < total; i++)
        printf(i ? ",%lld" : "%lld", (long long)all[2 * i]);
    printf("]");
    if (with_cls == 1) {
        printf(", \"cls\": [");
        for (int64_t i = 0; i < total; i++)
            printf(i ? ",%lld" : "%lld", (long long)all[2 * i + 1]);
        printf("]");
    }
    for (long p = 0; p < procs; p++) {
        int st;
        if (waitpid(pid[p], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "worker %ld failed\n", p);
            return 1;
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    printf(", \"errors\": %lld, \"seconds\": %.6f, \"cpu_seconds\": %.6f, \"procs\": %ld, \"client\": \"c\"}\n",
           (long long)errors, (double)(t1 - t0) / 1e9, cpu, procs);
    return 0;
}
