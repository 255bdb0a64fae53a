/* A limit for S3: what creating the files alone costs on the target file system, with no
 * network in the way. One thread creates COUNT files of SIZE bytes in DIR, one after another,
 * with the calls DataStream makes for each small upload: open a file without a name
 * (O_TMPFILE), pwrite its bytes, link it under its final name (linkat, AT_EMPTY_PATH or through
 * /proc/self/fd), close. With --direct it opens the final name (O_CREAT | O_EXCL) instead: one
 * call less and no orphan-list work in ext4, but a process killed between open and write leaves
 * an empty file under the final name; it is printed for reference only.
 * Prints one JSON line: files, wall seconds, CPU seconds (user + system), CPU microseconds per
 * file. Every receiver that stores each upload in its own file pays at least this CPU.
 * Usage: create-files DIR COUNT SIZE [--direct] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: create-files DIR COUNT SIZE [--direct]\n"); return 2; }
    long count = atol(argv[2]), size = atol(argv[3]);
    int direct = argc > 4 && strcmp(argv[4], "--direct") == 0;
    int dir = open(argv[1], O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (dir < 0 || count <= 0 || size < 0) { perror(argv[1]); return 1; }
    char *bytes = malloc(size ? size : 1);
    memset(bytes, 'x', size);
    struct rusage before, after;
    struct timespec t0, t1;
    getrusage(RUSAGE_SELF, &before);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < count; i++) {
        char name[64];
        snprintf(name, sizeof name, "upload-%s-%ld.bin", direct ? "direct" : "tmpfile", i);
        int fd = direct ? openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)
                        : openat(dir, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
        if (fd < 0) { perror("openat"); return 1; }
        if (pwrite(fd, bytes, size, 0) != size) { perror("pwrite"); return 1; }
        if (!direct && linkat(fd, "", dir, name, AT_EMPTY_PATH) != 0) {
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            if (linkat(AT_FDCWD, path, dir, name, AT_SYMLINK_FOLLOW) != 0) { perror("linkat"); return 1; }
        }
        if (close(fd) != 0) { perror("close"); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &after);
    double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    double cpu = seconds(after.ru_utime) - seconds(before.ru_utime) + seconds(after.ru_stime) - seconds(before.ru_stime);
    printf("{\"files\": %ld, \"seconds\": %.3f, \"cpuSeconds\": %.3f, \"cpuMicrosecondsPerFile\": %.1f}\n",
           count, wall, cpu, cpu / count * 1e6);
    return 0;
}
