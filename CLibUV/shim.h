// The only C header the UV target sees: libuv itself (Debian: libuv1-dev), plus Linux calls
// that glibc declares only under _GNU_SOURCE or that Swift cannot call (variadic), reached
// through syscall(2): batched UDP send (sendmmsg, with a layout-identical struct), accept4
// (the listener accepts itself, to handle running out of descriptors; see TCPListener),
// splice (socket to pipe to file without a copy in user space; see BlockingSocketMove),
// openat with O_PATH (files created relative to a directory descriptor; see
// BlockingFileSystem), ioctl(FIONREAD) (bytes waiting in a socket; see receiveQueueBytes) and
// prctl(PR_SET_PDEATHSIG) (a worker ends with its supervisor; see ParentDeath);
// and the C11 atomics Swift cannot apply to memory it did not allocate (words in a file mapped
// by several processes; see SharedSlots).
#ifndef DATASTREAM_CLIBUV_SHIM_H
#define DATASTREAM_CLIBUV_SHIM_H
#include <uv.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>

/// The same layout as glibc's `struct mmsghdr`.
struct datastream_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/// ioctl(FIONREAD): the bytes waiting to be read from a socket, or -1 with errno set.
static inline int datastream_queued_bytes(int fd) {
    int n = 0;
    return ioctl(fd, FIONREAD, &n) == 0 ? n : -1;
}

/// sendmmsg(2): returns the number of messages sent, or -1 with errno set.
static inline int datastream_sendmmsg(int fd, struct datastream_mmsghdr *messages, unsigned int count, int flags) {
    return (int)syscall(SYS_sendmmsg, fd, messages, count, flags);
}
/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC, no peer address: the new descriptor, or -1 with errno set.
static inline int datastream_accept_nonblocking(int fd) {
    return (int)syscall(SYS_accept4, fd, (void *)0, (void *)0, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
/// splice(2) flags and the pipe-size fcntl, from <fcntl.h> under _GNU_SOURCE.
#define DATASTREAM_SPLICE_F_MOVE 1
#define DATASTREAM_SPLICE_F_NONBLOCK 2
#define DATASTREAM_F_SETPIPE_SZ 1031
#define DATASTREAM_F_GETPIPE_SZ 1032
/// splice(2): bytes moved (0 at end of input), or -1 with errno set.
static inline long datastream_splice(int fdIn, long long *offsetIn, int fdOut, long long *offsetOut, unsigned long length, unsigned int flags) {
    return (long)syscall(SYS_splice, fdIn, offsetIn, fdOut, offsetOut, length, flags);
}
/// O_PATH, from <fcntl.h> under _GNU_SOURCE.
#define DATASTREAM_O_PATH 010000000
/// openat(2) (glibc's is variadic): the new descriptor, or -1 with errno set.
static inline int datastream_openat(int dirfd, const char *path, int flags, unsigned int mode) {
    return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}
/// prctl(PR_SET_PDEATHSIG, signal) (glibc's prctl is variadic): 0, or -1 with errno set.
static inline int datastream_parent_death_signal(int signal) {
    return (int)syscall(SYS_prctl, 1 /* PR_SET_PDEATHSIG */, (unsigned long)signal, 0UL, 0UL, 0UL);
}
/// Sequentially consistent atomics on a 64-bit word in shared memory (C11 builtins).
static inline unsigned long long datastream_atomic_load(const unsigned long long *word) {
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}
static inline void datastream_atomic_store(unsigned long long *word, unsigned long long value) {
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}
static inline unsigned long long datastream_atomic_add(unsigned long long *word, unsigned long long delta) {
    return __atomic_add_fetch(word, delta, __ATOMIC_SEQ_CST);
}
#endif
