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

    /// Sends the messages queued in `batch` with one `sendmmsg` call on a connected socket
    /// (libuv 1.44 has no batched send); removes those the kernel took and returns their count.
    /// `EAGAIN` returns 0 (the rest stay queued); other errors throw.
    public func send(_ batch: UDPBatch) throws(UVOperationError) -> Int {
        guard batch.count > 0 else { return 0 }
        let fd = try fileDescriptor()
        let sent = batch.withMessages { datastream_sendmmsg(fd, $0, UInt32($1), 0) }
        if sent < 0 {
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS { return 0 }
            if batch.segmentation, e == EIO || e == EINVAL || e == ENOPROTOOPT || e == EOPNOTSUPP {
                // No UDP GSO here (kernel, device or a datagram above the path MTU): go unsegmented.
                batch.disableSegmentation()
                return 0
            }
            throw UVOperationError("sendmmsg", code: -e)
        }
        batch.removeFirst(Int(sent))
        return Int(sent)
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

/// A reusable batch of datagrams for `UDPSocket.send(_:)`, written into the batch's own memory.
///
/// With `segmentation` (Linux UDP GSO, `UDP_SEGMENT`), datagrams of one size are packed back to
/// back into messages of up to 64 KiB and the kernel cuts them apart: one trip through the
/// network stack per message instead of per datagram. Only the last datagram of a message may be
/// shorter. Without it, each message is one datagram. Owned by one sender; not thread-safe.
public final class UDPBatch {
    /// Messages per `sendmmsg` call.
    public let messageCapacity: Int
    /// Bytes per message (a UDP datagram's limit, less headers).
    public static let messageBytes = 65_000
    /// Most datagrams the kernel accepts in one segmented message.
    public static let maxSegments = 64
    public private(set) var segmentation: Bool
    private let messages: UnsafeMutablePointer<datastream_mmsghdr>
    private let vectors: UnsafeMutablePointer<iovec>
    private let buffers: UnsafeMutableRawPointer
    private let controls: UnsafeMutableRawPointer
    private var lengths: [Int]
    private var segmentSizes: [Int]
    private var segmentCounts: [Int]
    /// Messages with at least one datagram.
    public private(set) var count = 0
    private static let controlBytes = 24  // CMSG_SPACE(sizeof(uint16_t)) on 64-bit Linux

    public init(messageCapacity: Int = 16, segmentation: Bool = true) {
        self.messageCapacity = messageCapacity
        self.segmentation = segmentation
        messages = .allocate(capacity: messageCapacity)
        messages.initialize(repeating: datastream_mmsghdr(), count: messageCapacity)
        vectors = .allocate(capacity: messageCapacity)
        vectors.initialize(repeating: iovec(), count: messageCapacity)
        buffers = .allocate(byteCount: messageCapacity * Self.messageBytes, alignment: 64)
        controls = .allocate(byteCount: messageCapacity * Self.controlBytes, alignment: 8)
        lengths = [Int](repeating: 0, count: messageCapacity)
        segmentSizes = [Int](repeating: 0, count: messageCapacity)
        segmentCounts = [Int](repeating: 0, count: messageCapacity)
    }

    deinit {
        messages.deallocate()
        vectors.deallocate()
        buffers.deallocate()
        controls.deallocate()
    }

    /// No room for another datagram of `length` bytes.
    public func isFull(for length: Int) -> Bool {
        guard count == messageCapacity else { return false }
        return !fitsInLast(length)
    }

    private func fitsInLast(_ length: Int) -> Bool {
        guard segmentation, count > 0 else { return false }
        let m = count - 1
        // Same size as the message's datagrams (or shorter, as its last), room, and the previous one full size.
        return length <= segmentSizes[m] && lengths[m] % segmentSizes[m] == 0
            && lengths[m] + length <= Self.messageBytes && segmentCounts[m] < Self.maxSegments
    }

    /// Appends a datagram of `length` bytes, written in place by `write`. The caller checked `isFull(for:)`.
    public func append(length: Int, write: (UnsafeMutableRawPointer) -> Void) {
        precondition(length <= Self.messageBytes)
        if !fitsInLast(length) {
            precondition(count < messageCapacity, "UDPBatch is full")
            lengths[count] = 0
            segmentSizes[count] = length
            segmentCounts[count] = 0
            count += 1
        }
        let m = count - 1
        write(buffers + m * Self.messageBytes + lengths[m])
        lengths[m] += length
        segmentCounts[m] += 1
    }

    fileprivate func withMessages<R>(_ body: (UnsafeMutablePointer<datastream_mmsghdr>, Int) -> R) -> R {
        for i in 0..<count {
            vectors[i] = iovec(iov_base: buffers + i * Self.messageBytes, iov_len: lengths[i])
            messages[i] = datastream_mmsghdr()
            messages[i].msg_hdr.msg_iov = vectors + i
            messages[i].msg_hdr.msg_iovlen = 1
            if segmentCounts[i] > 1 {
                let c = controls + i * Self.controlBytes
                c.initializeMemory(as: UInt8.self, repeating: 0, count: Self.controlBytes)
                c.storeBytes(of: 18, toByteOffset: 0, as: Int.self)                  // cmsg_len = CMSG_LEN(2)
                c.storeBytes(of: LinuxConstants.solUDP, toByteOffset: 8, as: Int32.self)  // cmsg_level
                c.storeBytes(of: LinuxConstants.udpSegment, toByteOffset: 12, as: Int32.self)  // cmsg_type
                c.storeBytes(of: UInt16(segmentSizes[i]), toByteOffset: 16, as: UInt16.self)
                messages[i].msg_hdr.msg_control = c
                messages[i].msg_hdr.msg_controllen = Self.controlBytes
            }
        }
        return body(messages, count)
    }

    fileprivate func removeFirst(_ n: Int) {
        guard n > 0 else { return }
        let rest = count - n
        for i in 0..<rest {
            (buffers + i * Self.messageBytes).copyMemory(from: buffers + (n + i) * Self.messageBytes, byteCount: lengths[n + i])
            lengths[i] = lengths[n + i]
            segmentSizes[i] = segmentSizes[n + i]
            segmentCounts[i] = segmentCounts[n + i]
        }
        count = rest
    }

    /// The kernel refused segmentation: from now on one datagram per message. Queued messages
    /// with several datagrams are dropped (the protocol above recovers them as losses).
    fileprivate func disableSegmentation() {
        segmentation = false
        count = 0
    }

    /// Drops every queued datagram.
    public func removeAll() { count = 0 }
}
