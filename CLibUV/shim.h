// The only C header the UV target sees: libuv itself (Debian: libuv1-dev), plus the one
// Linux call libuv 1.44 does not wrap: batched UDP send (sendmmsg), which glibc declares only
// under _GNU_SOURCE. It is reached through syscall(2) with a layout-identical struct.
#ifndef DATASTREAM_CLIBUV_SHIM_H
#define DATASTREAM_CLIBUV_SHIM_H
#include <uv.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <unistd.h>

/// The same layout as glibc's `struct mmsghdr`.
struct datastream_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/// sendmmsg(2): returns the number of messages sent, or -1 with errno set.
static inline int datastream_sendmmsg(int fd, struct datastream_mmsghdr *messages, unsigned int count, int flags) {
    return (int)syscall(SYS_sendmmsg, fd, messages, count, flags);
}
#endif
