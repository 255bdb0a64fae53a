import CLibUV
import Glibc

/// Sockets that several processes bind to one address (`SO_REUSEPORT`): the kernel spreads new
/// TCP connections over the listening sockets, and UDP datagrams by a hash of their source and
/// destination, so one source's datagrams keep going to one socket while the set stays the same.
/// libuv 1.44 has no flag for it (its `UV_UDP_REUSEADDR` is `SO_REUSEADDR` on Linux): the socket
/// is made here, marked, and given to libuv (`uv_tcp_open`, `uv_udp_open`) before it is bound.
/// Every process binding the address must set the option and run as the same user.
enum SharedPort {
    /// A non-blocking, close-on-exec socket of `type` with `SO_REUSEADDR` and `SO_REUSEPORT`.
    static func socket(ipv6: Bool, type: Int32, target: String) throws(UVOperationError) -> Int32 {
        let fd = Glibc.socket(ipv6 ? AF_INET6 : AF_INET, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw UVOperationError("socket", target: target, code: -errno) }
        var on: Int32 = 1
        for option in [SO_REUSEADDR, SO_REUSEPORT] where setsockopt(fd, SOL_SOCKET, option, &on, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            let code = -errno
            Glibc.close(fd)
            throw UVOperationError("setsockopt(SO_REUSEPORT)", target: target, code: code)
        }
        return fd
    }
}

extension TCPListener {
    /// Binds to `address` as one of several listeners sharing it (`SharedPort`): each process
    /// that binds it this way gets its share of the connections. Port 0 picks a free port, which
    /// the others then bind by number. The libuv functions are `uv_tcp_open` and `uv_tcp_bind`.
    public func bindShared(_ address: SocketAddress) throws(UVOperationError) {
        let fd = try SharedPort.socket(ipv6: address.isIPv6, type: Int32(SOCK_STREAM.rawValue), target: address.description)
        let opened = uv_tcp_open(raw.assumingMemoryBound(to: uv_tcp_t.self), fd)
        if opened < 0 {
            Glibc.close(fd)
            throw UVOperationError("tcp_open", target: address.description, code: opened)
        }
        try bind(address)
    }
}

extension UDPSocket {
    /// Binds to `address` as one of several sockets sharing it (`SharedPort`): a source's
    /// datagrams go to one of them, by a hash of the addresses. The libuv functions are
    /// `uv_udp_open` and `uv_udp_bind`.
    public func bindShared(_ address: SocketAddress) throws(UVOperationError) {
        let fd = try SharedPort.socket(ipv6: address.isIPv6, type: Int32(SOCK_DGRAM.rawValue), target: address.description)
        let opened = uv_udp_open(udp, fd)
        if opened < 0 {
            Glibc.close(fd)
            throw UVOperationError("udp_open", target: address.description, code: opened)
        }
        try bind(address)
    }
}
