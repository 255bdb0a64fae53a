import CLibUV
import Glibc

/// Socket options libuv 1.44 has no call for: buffers past the system limit, the don't-fragment
/// bit, and receive offload (`UDP_GRO`).
extension UDPSocket {
    /// Sets the kernel receive buffer to `bytes`, past `net.core.rmem_max` when the process may
    /// (`SO_RCVBUFFORCE`, root), else as far as the limit allows (`SO_RCVBUF`). Returns the size
    /// the kernel granted (it reports twice the usable size, as `getsockopt` does).
    @discardableResult
    public func requestReceiveBuffer(_ bytes: Int32) throws(UVOperationError) -> Int32 {
        try requestBuffer(bytes, force: SO_RCVBUFFORCE, option: SO_RCVBUF, name: "SO_RCVBUF")
    }

    /// Sets the kernel send buffer (`SO_SNDBUFFORCE`, else `SO_SNDBUF`); returns the size granted.
    @discardableResult
    public func requestSendBuffer(_ bytes: Int32) throws(UVOperationError) -> Int32 {
        try requestBuffer(bytes, force: SO_SNDBUFFORCE, option: SO_SNDBUF, name: "SO_SNDBUF")
    }

    private func requestBuffer(_ bytes: Int32, force: Int32, option: Int32, name: String) throws(UVOperationError) -> Int32 {
        let fd = try fileDescriptor()
        var value = bytes
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, force, &value, size) != 0 {
            value = bytes
            if setsockopt(fd, SOL_SOCKET, option, &value, size) != 0 { throw UVOperationError("setsockopt(\(name))", code: -errno) }
        }
        var granted: Int32 = 0
        var length = size
        if getsockopt(fd, SOL_SOCKET, option, &granted, &length) != 0 { throw UVOperationError("getsockopt(\(name))", code: -errno) }
        return granted
    }

    /// Sets the don't-fragment bit on every datagram (path MTU discovery "do"): a datagram too
    /// large for the path fails with `EMSGSIZE` instead of being fragmented.
    public func setDontFragment(ipv6: Bool) throws(UVOperationError) {
        let fd = try fileDescriptor()
        var value: Int32 = ipv6 ? IPV6_PMTUDISC_DO : IP_PMTUDISC_DO
        let status = ipv6
            ? setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_MTU_DISCOVER, &value, socklen_t(MemoryLayout<Int32>.size))
            : setsockopt(fd, Int32(IPPROTO_IP), IP_MTU_DISCOVER, &value, socklen_t(MemoryLayout<Int32>.size))
        if status != 0 { throw UVOperationError("setsockopt(MTU_DISCOVER)", code: -errno) }
    }

    /// Asks the kernel to hand over runs of equal-size datagrams of one flow as one buffer (UDP
    /// receive offload, `UDP_GRO`): segments of the first segment's size, the last possibly
    /// shorter. A loopback sender's segmented (`UDP_SEGMENT`) messages then arrive whole instead
    /// of being split and queued one datagram at a time. Returns false if the kernel refuses.
    @discardableResult
    public func enableReceiveOffload() throws(UVOperationError) -> Bool {
        let fd = try fileDescriptor()
        var on: Int32 = 1
        return setsockopt(fd, LinuxConstants.solUDP, LinuxConstants.udpGRO, &on, socklen_t(MemoryLayout<Int32>.size)) == 0
    }
}
