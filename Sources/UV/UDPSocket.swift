import CLibUV
import Glibc

/// Receives the datagrams of one `UDPSocket`; held strongly by the socket while it receives.
public protocol UDPSocketReceiver: AnyObject {
    /// Supplies memory for the next receive (with `recvmmsg` at least 64 KiB, or libuv 1.44 spins), or nil.
    func receiveBuffer(for socket: UDPSocket, suggestedSize: Int) -> UnsafeMutableRawBufferPointer?
    /// One receive callback. `count` bytes at the start of `datagram` came from `sender`; `sender` is nil
    /// when libuv has nothing more for now (`count` 0). `isMoreOfBatch` is libuv's `UV_UDP_MMSG_CHUNK`:
    /// the memory is part of a larger buffer that is handed back later, in a callback where it is false.
    func socket(_ socket: UDPSocket, didReceive count: Int, in datagram: UnsafeMutableRawBufferPointer?, from sender: SocketAddress?, isMoreOfBatch: Bool, error: UVError?)
}

/// A UDP socket on a loop, optionally receiving in batches (`recvmmsg`). Its owner closes it;
/// it keeps itself alive until libuv's close callback (see `Handle`). The libuv type is `uv_udp_t`.
public final class UDPSocket: Handle {
    private var receiver: UDPSocketReceiver?

    /// The libuv functions are `uv_udp_init` and `uv_udp_init_ex` (with `UV_UDP_RECVMMSG` when `batchedReceive`).
    public init(loop: Loop, batchedReceive: Bool = false) throws(UVOperationError) {
        let flags = UInt32(AF_UNSPEC) | (batchedReceive ? UInt32(UV_UDP_RECVMMSG.rawValue) : 0)
        let raw = try Handle.initialise(UV_UDP, "udp_init_ex") { uv_udp_init_ex(loop.uv, $0.assumingMemoryBound(to: uv_udp_t.self), flags) }
        super.init(loop: loop, initialisedHandle: raw)
    }

    var udp: UnsafeMutablePointer<uv_udp_t> { raw.assumingMemoryBound(to: uv_udp_t.self) }

    /// The libuv function is `uv_udp_bind`.
    public func bind(_ address: SocketAddress) throws(UVOperationError) {
        try check(address.withSockAddr { uv_udp_bind(udp, $0, 0) }, "udp_bind", target: address.description)
    }

    /// The bound address. The libuv function is `uv_udp_getsockname`.
    public func localAddress() throws(UVOperationError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_udp_getsockname(udp, $0, &length) }
        }
        try check(status, "udp_getsockname")
        return SocketAddress(storage: storage)
    }

    /// Sets the kernel receive buffer; returns the size the kernel reports afterwards.
    /// The libuv function is `uv_recv_buffer_size`.
    @discardableResult
    public func setReceiveBufferSize(_ bytes: Int32) throws(UVOperationError) -> Int32 {
        var value = bytes
        try check(uv_recv_buffer_size(handle, &value), "recv_buffer_size")
        var read: Int32 = 0
        try check(uv_recv_buffer_size(handle, &read), "recv_buffer_size")
        return read
    }

    /// Starts delivering datagrams. The libuv function is `uv_udp_recv_start`.
    public func startReceiving(_ receiver: UDPSocketReceiver) throws(UVOperationError) {
        self.receiver = receiver
        try check(uv_udp_recv_start(udp, udpAlloc, udpReceived), "udp_recv_start")
    }

    /// The libuv function is `uv_udp_recv_stop`.
    public func stopReceiving() { uv_udp_recv_stop(udp) }

    /// Sends one datagram at once if the kernel takes it; returns the bytes sent.
    /// The libuv function is `uv_udp_try_send`.
    @discardableResult
    public func trySend(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress) throws(UVOperationError) -> Int {
        var buf = uv_buf_init(UnsafeMutablePointer(mutating: bytes.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(bytes.count))
        let status = address.withSockAddr { uv_udp_try_send(udp, &buf, 1, $0) }
        try check(status, "udp_try_send", target: address.description)
        return Int(status)
    }

    /// Sends every later datagram to `address` (and receives only from it).
    /// The libuv function is `uv_udp_connect`.
    public func connect(_ address: SocketAddress) throws(UVOperationError) {
        try check(address.withSockAddr { uv_udp_connect(udp, $0) }, "udp_connect", target: address.description)
    }

    /// The socket's descriptor, for the socket options and batched sends libuv does not offer.
    /// The libuv function is `uv_fileno`.
    public func fileDescriptor() throws(UVOperationError) -> Int32 {
        var fd = uv_os_fd_t()
        try check(uv_fileno(handle, &fd), "fileno")
        return Int32(fd)
    }

    /// Sends one datagram made of `head` then `body` at once if the kernel takes it (to the
    /// connected peer when `address` is nil). The libuv function is `uv_udp_try_send`.
    @discardableResult
    public func trySend(_ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, to address: SocketAddress?) throws(UVOperationError) -> Int {
        var bufs = (
            uv_buf_init(UnsafeMutablePointer(mutating: head.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(head.count)),
            uv_buf_init(UnsafeMutablePointer(mutating: body.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(body.count)))
        let status = withUnsafeMutableBytes(of: &bufs) { p in
            let b = p.baseAddress!.assumingMemoryBound(to: uv_buf_t.self)
            if let address { return address.withSockAddr { uv_udp_try_send(udp, b, 2, $0) } }
            return uv_udp_try_send(udp, b, 2, nil)
        }
        try check(status, "udp_try_send", target: address?.description)
        return Int(status)
    }

    override func releaseCallbacks() { receiver = nil }

    fileprivate func allocate(_ suggested: Int) -> UnsafeMutableRawBufferPointer? {
        receiver?.receiveBuffer(for: self, suggestedSize: suggested)
    }

    fileprivate func deliver(_ nread: Int, _ buf: UnsafePointer<uv_buf_t>?, _ addr: UnsafePointer<sockaddr>?, _ flags: UInt32) {
        let memory = buf.flatMap { b in b.pointee.base.map { UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer($0), count: b.pointee.len) } }
        let isChunk = flags & UInt32(UV_UDP_MMSG_CHUNK.rawValue) != 0
        if nread < 0 {
            receiver?.socket(self, didReceive: 0, in: memory, from: nil, isMoreOfBatch: isChunk, error: UVError(code: Int32(nread)))
        } else {
            receiver?.socket(self, didReceive: nread, in: memory, from: SocketAddress(addr), isMoreOfBatch: isChunk, error: nil)
        }
    }
}

private func udpAlloc(_ h: UnsafeMutablePointer<uv_handle_t>?, _ suggested: Int, _ buf: UnsafeMutablePointer<uv_buf_t>?) {
    let socket = Handle.owner(h, as: UDPSocket.self)
    if let memory = socket.allocate(suggested), let base = memory.baseAddress {
        buf!.pointee = uv_buf_init(base.assumingMemoryBound(to: CChar.self), UInt32(memory.count))
    } else {
        buf!.pointee = uv_buf_init(nil, 0)
    }
}

private func udpReceived(_ h: UnsafeMutablePointer<uv_udp_t>?, _ nread: Int, _ buf: UnsafePointer<uv_buf_t>?, _ addr: UnsafePointer<sockaddr>?, _ flags: UInt32) {
    Handle.owner(h, as: UDPSocket.self).deliver(nread, buf, addr, flags)
}
