import CLibUV
import Glibc

/// What a stream's reader is told after each libuv read callback.
public enum ReadEvent: Equatable, Sendable {
    /// `count` bytes arrived at the start of the buffer the reader supplied (0 means "nothing now", not EOF).
    case data(count: Int)
    /// The peer closed its side (`UV_EOF`).
    case endOfStream
    /// The reader supplied no buffer (`UV_ENOBUFS`): reading is paused until `startReading` again.
    case noBuffer
    /// The read failed, for example `ECONNRESET`.
    case failed(UVError)
}

/// Receives the read events of one `TCPStream`. The stream holds its reader strongly from
/// `startReading` until the handle is closed (or `stopReading`), so the reader lives as long as it reads.
public protocol TCPStreamReader: AnyObject {
    /// Supplies the memory for the next read, or nil when none may be used now (the stream then
    /// reports `.noBuffer` and stops reading). The memory belongs to the reader; the stream only fills it.
    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer?
    /// One read callback. `buffer` is exactly what `readBuffer` returned for it (nil if none), handed back on every path.
    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?)
}

/// How a connection made by `TCPStream.connectNow` or `ClientSocketGroup.connect` may pack its
/// first bytes into segments.
/// Each saves the kernel a segment's trip through both ends of the connection, which on loopback
/// the connecting process pays for. Neither changes the bytes the receiver reads.
public struct ClientSegments: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// The handshake's last ACK is not sent on its own: it rides on the first bytes written
    /// (`TCP_QUICKACK` off before connecting). For a client that writes at once.
    public static let ackWithFirstBytes = ClientSegments(rawValue: 1)
}

/// A connected TCP stream (accepted or connected). Whoever receives it owns it and must `close()` it;
/// it keeps itself alive until libuv's close callback (see `Handle`). The libuv type is `uv_tcp_t`.
///
/// `reader` and `isReading` are touched on every read: they skip Swift's run-time exclusivity
/// check (`@exclusivity(unchecked)`), which is sound because each is only ever read or assigned
/// whole, never passed `inout` across a call.
///
/// An accepted socket is given to libuv (`uv_tcp_open`) only when libuv first has to act on it
/// (`startReading`, a write, `shutdown`, `setNoDelay`). Until then the stream holds the
/// descriptor itself: `readNow` reads it, and `close` closes it. A connection served entirely by
/// reads at accept (a small upload and its end, already in the kernel) so costs libuv no
/// `ioctl(FIONBIO)` (accept4 already made the socket non-blocking) and no `epoll_ctl` to forget
/// a descriptor it never polled.
public final class TCPStream: Handle {
    @exclusivity(unchecked) private var reader: TCPStreamReader?
    /// Whether `startReading` is in effect.
    @exclusivity(unchecked) public private(set) var isReading = false
    /// An accepted socket not yet given to libuv, or -1. Owned by this stream until then.
    @exclusivity(unchecked) private var unopenedDescriptor: Int32 = -1

    init(loop: Loop) throws(UVOperationError) {
        let raw = try Handle.initialise(UV_TCP, "tcp_init") { uv_tcp_init(loop.uv, $0.assumingMemoryBound(to: uv_tcp_t.self)) }
        super.init(loop: loop, initialisedHandle: raw)
    }

    /// A stream for a socket `accept4` returned (non-blocking, close-on-exec), or one
    /// `connectNow` made, which it now owns.
    convenience init(loop: Loop, accepted descriptor: Int32) throws(UVOperationError) {
        try self.init(loop: loop)
        unopenedDescriptor = descriptor
    }

    /// Gives an accepted socket to libuv, once, before libuv first acts on it. The libuv
    /// function is `uv_tcp_open`. If that fails the descriptor stays this stream's (closed by `close`).
    private func openInLibuv() throws(UVOperationError) {
        guard unopenedDescriptor >= 0 else { return }
        try check(uv_tcp_open(tcp, uv_os_sock_t(unopenedDescriptor)), "tcp_open")
        unopenedDescriptor = -1
    }

    /// The socket's descriptor, whether or not libuv has it yet (nil once closed).
    var descriptor: Int32? {
        guard isOpen else { return nil }
        if unopenedDescriptor >= 0 { return unopenedDescriptor }
        var fd: uv_os_fd_t = -1
        return uv_fileno(handle, &fd) == 0 ? fd : nil
    }

    /// Closes the stream; a socket libuv never had is closed here (`close(2)`), then the handle
    /// is closed as any other (`Handle.close`).
    public override func close(_ completion: (() -> Void)? = nil) {
        if isOpen, unopenedDescriptor >= 0 {
            Glibc.close(unopenedDescriptor)
            unopenedDescriptor = -1
        }
        super.close(completion)
    }

    var stream: UnsafeMutablePointer<uv_stream_t> { raw.assumingMemoryBound(to: uv_stream_t.self) }
    var tcp: UnsafeMutablePointer<uv_tcp_t> { raw.assumingMemoryBound(to: uv_tcp_t.self) }

    /// Connects to `address`; `completion` gets the connected stream (now yours) or the error.
    /// The libuv function is `uv_tcp_connect`.
    ///
    /// With `source`, the connection leaves from that local address (its port 0: the kernel picks
    /// the port at connect time, per destination, with `IP_BIND_ADDRESS_NO_PORT`, so each source
    /// address has the whole ephemeral range for each destination). A load generator spreads its
    /// connections over several loopback sources so the kernel's port search stays short.
    public static func connect(loop: Loop, to address: SocketAddress, from source: SocketAddress? = nil, completion: @escaping (Result<TCPStream, UVOperationError>) -> Void) throws(UVOperationError) {
        let stream = try TCPStream(loop: loop)
        if let source {
            do throws(UVOperationError) {
                try stream.bindSource(source)
            } catch {
                stream.close()
                throw error
            }
        }
        let context = ConnectContext(stream: stream, target: address.description, completion: completion)
        let req = allocateForLibuv(uv_req_size(UV_CONNECT))
            .assumingMemoryBound(to: uv_connect_t.self)
        req.pointee.data = Unmanaged.passRetained(context).toOpaque()
        let status = address.withSockAddr { uv_tcp_connect(req, stream.tcp, $0, connectDone) }
        if status < 0 {
            Unmanaged<ConnectContext>.fromOpaque(req.pointee.data!).release()
            freeForLibuv(req)
            stream.close()
            throw UVOperationError("tcp_connect", target: address.description, code: status)
        }
    }

    /// Starts connecting to `address` and returns the stream at once, without waiting for the
    /// handshake: the first write goes out as soon as the kernel allows (libuv polls for
    /// writability only if it has to wait), and a failed connection shows as the first read's
    /// or write's error (`ECONNREFUSED`, ...). For a load generator, where every system call of
    /// a connection counts: one `socket(2)` non-blocking from the start, an optional source
    /// (as in `connect(loop:to:from:completion:)`, without `uv_tcp_bind`'s `SO_REUSEADDR`),
    /// `connect(2)`, and no `getsockopt(SO_ERROR)` or poll for the connect itself. libuv 1.44
    /// still makes one `ioctl(FIONBIO)` when it takes the socket (`uv_tcp_open`), and one
    /// `epoll_ctl` each to watch and to forget it.
    ///
    /// `segments` says how the connection's first bytes may be packed (`ClientSegments`).
    public static func connectNow(loop: Loop, to address: SocketAddress, from source: SocketAddress? = nil, segments: ClientSegments = []) throws(UVOperationError) -> TCPStream {
        let fd = try startConnecting(to: address, from: source, segments: segments)
        do {
            return try TCPStream(loop: loop, accepted: fd)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// The socket `connectNow` (and `ClientSocketGroup.connect`) start: made non-blocking, given
    /// `segments`' options and `source`, with `connect(2)` under way. Yours to close.
    static func startConnecting(to address: SocketAddress, from source: SocketAddress?, segments: ClientSegments) throws(UVOperationError) -> Int32 {
        let fd = try clientSocket(ipv6: address.isIPv6, source: source, target: address.description)
        if segments.contains(.ackWithFirstBytes) { setOption(fd, Int32(IPPROTO_TCP), TCP_QUICKACK, 0) }
        if let source {
            let bound = source.withSockAddr { Glibc.bind(fd, $0, socklen_t(source.isIPv6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)) }
            if bound != 0 {
                let code = -errno
                Glibc.close(fd)
                throw UVOperationError("bind", target: source.description, code: code)
            }
        }
        let started = address.withSockAddr { Glibc.connect(fd, $0, socklen_t(address.isIPv6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)) }
        if started != 0 && errno != EINPROGRESS {
            let code = -errno
            Glibc.close(fd)
            throw UVOperationError("connect", target: address.description, code: code)
        }
        return fd
    }

    /// A non-blocking, close-on-exec TCP socket made in one call; with an IPv4 `source`, marked
    /// so that binding it picks no port (`IP_BIND_ADDRESS_NO_PORT`: the port is chosen at
    /// connect time, per destination).
    private static func clientSocket(ipv6: Bool, source: SocketAddress?, target: @autoclosure () -> String) throws(UVOperationError) -> Int32 {
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 {
            let code = -errno
            throw UVOperationError("socket", target: target(), code: code)
        }
        if let source, !source.isIPv6 { setOption(fd, Int32(IPPROTO_IP), LinuxConstants.ipBindAddressNoPort, 1) }
        return fd
    }

    /// An integer socket option that only saves work when it takes (the connection works
    /// without it), so its failure is not an error.
    private static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) {
        var value = value
        _ = setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    private func bindSource(_ source: SocketAddress) throws(UVOperationError) {
        // The option must be set between socket(2) and bind(2), and uv_tcp_bind does both at
        // once: so the socket is made here, given to libuv (uv_tcp_open), then bound.
        let fd = try TCPStream.clientSocket(ipv6: source.isIPv6, source: source, target: source.description)
        let opened = uv_tcp_open(tcp, fd)
        if opened < 0 {
            Glibc.close(fd)
            throw UVOperationError("tcp_open", target: source.description, code: opened)
        }
        let status = source.withSockAddr { uv_tcp_bind(tcp, $0, 0) }
        if status < 0 { throw UVOperationError("tcp_bind", target: source.description, code: status) }
    }

    /// Starts delivering reads to `reader`. The libuv function is `uv_read_start`.
    public func startReading(_ reader: TCPStreamReader) throws(UVOperationError) {
        self.reader = reader
        guard !isReading else { return }
        try openInLibuv()
        try check(uv_read_start(stream, streamAlloc, streamRead), "read_start")
        isReading = true
    }

    /// Reads once, now, what the kernel already holds for this socket, without waiting for the
    /// loop to report it readable: `reader` gets `readBuffer`, then `stream(_:didRead:buffer:)`
    /// exactly as from a read callback. Returns false, after handing the buffer back with
    /// `.data(count: 0)`, if there was nothing to read yet (or no buffer): then wait with
    /// `startReading`. A client that sent everything before its connection was accepted (a small
    /// upload and its end) is served without the socket ever being registered with epoll.
    /// libuv has no such call (`uv_try_write` has no reading twin); this is `recv(2)` with
    /// `MSG_DONTWAIT` on the stream's descriptor, which libuv leaves alone while not reading.
    public func readNow(_ reader: TCPStreamReader) -> Bool {
        precondition(!isReading, "readNow while libuv reads the stream")
        guard let fd = descriptor else { return false }
        guard let buffer = reader.readBuffer(for: self, suggestedSize: 65536) else { return false }
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            if n > 0 {
                reader.stream(self, didRead: .data(count: n), buffer: buffer)
                return true
            }
            if n == 0 {
                reader.stream(self, didRead: .endOfStream, buffer: buffer)
                return true
            }
            switch errno {
            case EINTR:
                continue
            case EAGAIN, EWOULDBLOCK:
                reader.stream(self, didRead: .data(count: 0), buffer: buffer)
                return false
            case let code:
                reader.stream(self, didRead: .failed(UVError(code: -code)), buffer: buffer)
                return true
            }
        }
    }

    /// What a `peekNow` or `takeNow` found.
    public enum Peeked: Equatable, Sendable {
        /// This many bytes (at most the buffer's size).
        case bytes(Int)
        /// Nothing yet: wait for the socket to be readable.
        case nothingYet
        case endOfStream
        case failed(UVError)
    }

    /// Copies what the socket holds now into `buffer` without taking it (`MSG_PEEK`): a later
    /// read gets the same bytes. For a header whose length is known only once its start is in
    /// (a PROXY header), read exactly with `takeNow` once it is all there, so nothing after it
    /// is taken. Only while libuv does not read the stream. libuv has no such call; this is
    /// `recv(2)` on the descriptor.
    public func peekNow(into buffer: UnsafeMutableRawBufferPointer) -> Peeked {
        receive(into: buffer, flags: Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
    }

    /// Takes up to `buffer.count` bytes the socket holds now (after `peekNow` saw them: exactly
    /// those). Only while libuv does not read the stream; `recv(2)` on the descriptor.
    public func takeNow(into buffer: UnsafeMutableRawBufferPointer) -> Peeked {
        receive(into: buffer, flags: Int32(MSG_DONTWAIT))
    }

    private func receive(into buffer: UnsafeMutableRawBufferPointer, flags: Int32) -> Peeked {
        precondition(!isReading, "a raw receive while libuv reads the stream")
        guard let fd = descriptor else { return .failed(.badDescriptor) }
        return TCPStream.receive(fd, into: buffer, flags: flags)
    }

    /// `recv(2)` on a socket libuv does not read, retried on `EINTR`.
    static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: Int32) -> Peeked {
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, flags)
            if n > 0 { return .bytes(n) }
            if n == 0 { return .endOfStream }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .nothingYet
            case let code: return .failed(UVError(code: -code))
            }
        }
    }

    /// Stops reading; the reader is kept for a later `startReading`. The libuv function is `uv_read_stop`.
    public func stopReading() {
        guard isReading else { return }
        uv_read_stop(stream)
        isReading = false
    }

    /// Writes a copy of `bytes`; `completion` runs when the kernel took them or the write failed.
    /// If this throws, `completion` never runs. The libuv function is `uv_write`.
    public func write(_ bytes: some Collection<UInt8>, completion: ((UVOperationError?) -> Void)? = nil) throws(UVOperationError) {
        let count = bytes.count
        let copy = copyOf(bytes)
        try write(start: UnsafeRawPointer(copy.baseAddress!), count: count, owned: copy, completion: completion)
    }

    /// Writes a copy of `prefix` followed by `bytes` (not copied: valid and unchanged until
    /// `completion` runs) in one `uv_write` of two buffers, so both usually leave in one
    /// `writev(2)`. If this throws, `completion` never runs.
    public func write(copying prefix: some Collection<UInt8>, then bytes: UnsafeRawBufferPointer, completion: ((UVOperationError?) -> Void)? = nil) throws(UVOperationError) {
        let count = prefix.count
        let copy = copyOf(prefix)
        var bufs = [
            uv_buf_init(copy.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(count)),
            uv_buf_init(UnsafeMutablePointer(mutating: (bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!).assumingMemoryBound(to: CChar.self)), UInt32(bytes.count)),
        ]
        try submitWrite(&bufs, owned: copy, completion: completion)
    }

    /// A new buffer (at least one byte) holding `bytes`: one memcpy for contiguous collections
    /// (arrays, slices), element by element only for others.
    private func copyOf(_ bytes: some Collection<UInt8>) -> UnsafeMutableRawBufferPointer {
        let copy = UnsafeMutableRawBufferPointer(start: allocateForLibuv(bytes.count), count: max(bytes.count, 1))
        let copied: Void? = bytes.withContiguousStorageIfAvailable { copy.copyMemory(from: UnsafeRawBufferPointer($0)) }
        if copied == nil { _ = copy.initializeMemory(as: UInt8.self, from: bytes) }
        return copy
    }

    /// Writes `bytes` without copying them: the memory must stay valid and unchanged until `completion` runs.
    /// If this throws, `completion` never runs. The libuv function is `uv_write`.
    public func write(unsafeBytes bytes: UnsafeRawBufferPointer, completion: ((UVOperationError?) -> Void)? = nil) throws(UVOperationError) {
        try write(start: bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, count: bytes.count, owned: nil, completion: completion)
    }

    private func write(start: UnsafeRawPointer, count: Int, owned: UnsafeMutableRawBufferPointer?, completion: ((UVOperationError?) -> Void)?) throws(UVOperationError) {
        var bufs = [uv_buf_init(UnsafeMutablePointer(mutating: start.assumingMemoryBound(to: CChar.self)), UInt32(count))]
        try submitWrite(&bufs, owned: owned, completion: completion)
    }

    private func submitWrite(_ bufs: inout [uv_buf_t], owned: UnsafeMutableRawBufferPointer?, completion: ((UVOperationError?) -> Void)?) throws(UVOperationError) {
        let context = WriteContext(owned: owned, completion: completion)
        try openInLibuv()  // if this throws, the context (and the copy it owns) goes with it
        let req = allocateForLibuv(uv_req_size(UV_WRITE))
            .assumingMemoryBound(to: uv_write_t.self)
        req.pointee.data = Unmanaged.passRetained(context).toOpaque()
        // libuv copies the uv_buf_t array (not the bytes) when it must queue the write.
        let status = bufs.withUnsafeMutableBufferPointer { uv_write(req, stream, $0.baseAddress, UInt32($0.count), writeDone) }
        if status < 0 {
            Unmanaged<WriteContext>.fromOpaque(req.pointee.data!).release()
            freeForLibuv(req)
            throw UVOperationError("write", code: status)
        }
    }

    /// Writes what the kernel takes of `first` then `second` now, without queueing the rest:
    /// the count taken, 0 if nothing could be (the socket is full, or writes are queued). The
    /// libuv function is `uv_try_write`.
    public func tryWrite(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) throws(UVOperationError) -> Int {
        try openInLibuv()
        var bufs = [first, second].map { uv_buf_init(UnsafeMutablePointer(mutating: ($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!).assumingMemoryBound(to: CChar.self)), UInt32($0.count)) }
        let taken = bufs.withUnsafeMutableBufferPointer { uv_try_write(stream, $0.baseAddress, UInt32($0.count)) }
        if taken == UV_EAGAIN.rawValue { return 0 }
        if taken < 0 { throw UVOperationError("try_write", code: taken) }
        return Int(taken)
    }

    /// Bytes queued in libuv for writing and not yet taken by the kernel. The field is `write_queue_size`.
    public var writeQueueSize: Int { stream.pointee.write_queue_size }

    /// Half-closes: the peer sees end of stream after the queued writes. The libuv function is `uv_shutdown`.
    public func shutdown(completion: ((UVOperationError?) -> Void)? = nil) throws(UVOperationError) {
        try openInLibuv()
        let context = WriteContext(owned: nil, completion: completion)
        let req = allocateForLibuv(uv_req_size(UV_SHUTDOWN))
            .assumingMemoryBound(to: uv_shutdown_t.self)
        req.pointee.data = Unmanaged.passRetained(context).toOpaque()
        let status = uv_shutdown(req, stream, shutdownDone)
        if status < 0 {
            Unmanaged<WriteContext>.fromOpaque(req.pointee.data!).release()
            freeForLibuv(req)
            throw UVOperationError("shutdown", code: status)
        }
    }

    /// Disables Nagle's algorithm. The libuv function is `uv_tcp_nodelay`.
    public func setNoDelay(_ on: Bool) throws(UVOperationError) {
        try openInLibuv()
        try check(uv_tcp_nodelay(tcp, on ? 1 : 0), "tcp_nodelay")
    }

    /// The remote address: `getpeername(2)` on the descriptor (libuv's `uv_tcp_getpeername`
    /// needs the socket given to libuv first).
    public func peerAddress() throws(UVOperationError) -> SocketAddress {
        try socketAddress(of: descriptor, "getpeername", getpeername)
    }

    /// The local address: `getsockname(2)` on the descriptor.
    public func localAddress() throws(UVOperationError) -> SocketAddress {
        try socketAddress(of: descriptor, "getsockname", getsockname)
    }

    override func releaseCallbacks() {
        reader = nil
        isReading = false
    }

    fileprivate func allocate(_ suggested: Int) -> UnsafeMutableRawBufferPointer? {
        reader?.readBuffer(for: self, suggestedSize: suggested)
    }

    fileprivate func deliver(_ nread: Int, _ base: UnsafeMutablePointer<CChar>?, _ len: Int) {
        let buffer = base.map { UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer($0), count: len) }
        let event: ReadEvent
        if nread >= 0 {
            event = .data(count: nread)
        } else if nread == Int(UV_EOF.rawValue) {
            event = .endOfStream
            stopReading()
        } else if nread == Int(UV_ENOBUFS.rawValue) {
            event = .noBuffer
            stopReading()
        } else {
            event = .failed(UVError(code: Int32(nread)))
            stopReading()
        }
        reader?.stream(self, didRead: event, buffer: buffer)
    }
}

/// A socket's own or peer address (`getsockname(2)` or `getpeername(2)`, as `call`) on `fd`;
/// EBADF if there is none (a closed socket, whose handle memory may be gone).
func socketAddress(of fd: Int32?, _ operation: String, _ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) throws(UVOperationError) -> SocketAddress {
    guard let fd else { throw UVOperationError(operation, code: UVError.badDescriptor.code) }
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let status = withUnsafeMutablePointer(to: &storage) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, &length) }
    }
    if status != 0 { throw UVOperationError(operation, code: -errno) }
    return SocketAddress(storage: storage)
}

/// A listening TCP socket. Its owner closes it; each accepted `TCPStream` goes to the
/// `onConnection` callback, which then owns it. The libuv type is `uv_tcp_t` (bound with
/// `uv_tcp_bind`); accepting is done here rather than by `uv_listen`, so that running out of
/// descriptors is seen and handled instead of hidden.
///
/// Accepting: a `Poll` watches the listening socket; when it is readable, `accept4` runs until
/// the kernel has no more (at most 256 per wake-up, so other handles get their turn), and each
/// descriptor becomes a stream (given to libuv, `uv_tcp_open`, only when first needed: see
/// `TCPStream`). `pauseAccepting` stops watching: connections
/// then wait in the kernel's backlog; `resumeAccepting` watches again.
///
/// Out of descriptors (`EMFILE`, `ENFILE`, also `ENOBUFS`, `ENOMEM`): the listener pauses
/// itself and reports the error once through `onConnection`; nothing is dropped, and it stays
/// paused until its owner calls `resumeAccepting` (for example when a connection closes). This
/// differs from libuv's own `uv_listen`, which accepts and closes the waiting connections.
public final class TCPListener: Handle {
    private var onConnection: ((Result<TCPStream, UVOperationError>) -> Void)?
    private var poll: Poll?
    private var descriptor: Int32 = -1
    /// Whether accepting is paused (by `pauseAccepting`, or by the listener itself when out of descriptors).
    public private(set) var isAcceptingPaused = false

    /// The libuv function is `uv_tcp_init`.
    public init(loop: Loop) throws(UVOperationError) {
        let raw = try Handle.initialise(UV_TCP, "tcp_init") { uv_tcp_init(loop.uv, $0.assumingMemoryBound(to: uv_tcp_t.self)) }
        super.init(loop: loop, initialisedHandle: raw)
    }

    private var tcp: UnsafeMutablePointer<uv_tcp_t> { raw.assumingMemoryBound(to: uv_tcp_t.self) }

    /// Binds to `address` (port 0 picks a free port). The libuv function is `uv_tcp_bind`.
    public func bind(_ address: SocketAddress) throws(UVOperationError) {
        try check(address.withSockAddr { uv_tcp_bind(tcp, $0, 0) }, "tcp_bind", target: address.description)
    }

    /// Starts listening on the bound socket (`listen(2)`) and accepting (see the type's documentation).
    public func listen(backlog: Int32 = 4096, onConnection: @escaping (Result<TCPStream, UVOperationError>) -> Void) throws(UVOperationError) {
        // uv_tcp_bind keeps a bind failure such as EADDRINUSE for uv_listen to report.
        let delayed = tcp.pointee.delayed_error
        if delayed != 0 { throw UVOperationError("listen", code: delayed) }
        var fd: uv_os_fd_t = -1
        try check(uv_fileno(handle, &fd), "fileno")
        if Glibc.listen(fd, backlog) != 0 { throw UVOperationError("listen", code: -errno) }
        let poll = try Poll(loop: loop, socket: fd)
        self.poll = poll
        descriptor = fd
        self.onConnection = onConnection
        try watch()
    }

    /// Stops accepting until `resumeAccepting`; connections wait in the kernel's backlog.
    public func pauseAccepting() {
        guard !isAcceptingPaused else { return }
        isAcceptingPaused = true
        poll?.stop()
    }

    /// Accepts again (what waited in the backlog first). A failure to restart watching is
    /// reported through `onConnection`.
    public func resumeAccepting() {
        guard isAcceptingPaused, isOpen else { return }
        isAcceptingPaused = false
        do { try watch() } catch { onConnection?(.failure(error)) }
    }

    /// The bound address (with the real port after binding port 0): `getsockname(2)`.
    public func localAddress() throws(UVOperationError) -> SocketAddress {
        var fd: uv_os_fd_t = -1
        return try socketAddress(of: isOpen && uv_fileno(handle, &fd) == 0 ? fd : nil, "getsockname", getsockname)
    }

    /// Closes the watcher, then the socket.
    public override func close(_ completion: (() -> Void)? = nil) {
        poll?.close()
        poll = nil
        super.close(completion)
    }

    override func releaseCallbacks() { onConnection = nil }

    private func watch() throws(UVOperationError) {
        try poll?.startReadable { [unowned self] error in
            if let error {
                onConnection?(.failure(UVOperationError("poll(listening socket)", code: error.code)))
            } else {
                acceptWaiting()
            }
        }
    }

    private func acceptWaiting() {
        var accepted = 0
        while accepted < 256, !isAcceptingPaused, isOpen, let onConnection {
            let fd = datastream_accept_nonblocking(descriptor)
            if fd < 0 {
                let code = errno
                switch code {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    pauseAccepting()
                    onConnection(.failure(UVOperationError("accept", code: -code)))
                    return
                default:
                    onConnection(.failure(UVOperationError("accept", code: -code)))
                    return
                }
            }
            accepted += 1
            let client: TCPStream
            do {
                client = try TCPStream(loop: loop, accepted: fd)  // given to libuv when first needed
            } catch {
                Glibc.close(fd)
                onConnection(.failure(error))
                continue
            }
            onConnection(.success(client))
        }
    }
}

// MARK: - Request contexts and C trampolines (the only place Unmanaged appears for TCP).

private final class WriteContext {
    let owned: UnsafeMutableRawBufferPointer?
    let completion: ((UVOperationError?) -> Void)?
    init(owned: UnsafeMutableRawBufferPointer?, completion: ((UVOperationError?) -> Void)?) {
        self.owned = owned
        self.completion = completion
    }
    deinit { if let owned { freeForLibuv(owned.baseAddress!) } }
}

private final class ConnectContext {
    let stream: TCPStream
    let target: String
    let completion: (Result<TCPStream, UVOperationError>) -> Void
    init(stream: TCPStream, target: String, completion: @escaping (Result<TCPStream, UVOperationError>) -> Void) {
        self.stream = stream
        self.target = target
        self.completion = completion
    }
}

private func connectDone(_ req: UnsafeMutablePointer<uv_connect_t>?, _ status: Int32) {
    let context = Unmanaged<ConnectContext>.fromOpaque(req!.pointee.data!).takeRetainedValue()
    freeForLibuv(req!)
    if status < 0 {
        context.stream.close()
        context.completion(.failure(UVOperationError("tcp_connect", target: context.target, code: status)))
    } else {
        context.completion(.success(context.stream))
    }
}

private func writeDone(_ req: UnsafeMutablePointer<uv_write_t>?, _ status: Int32) {
    let context = Unmanaged<WriteContext>.fromOpaque(req!.pointee.data!).takeRetainedValue()
    freeForLibuv(req!)
    context.completion?(status < 0 ? UVOperationError("write", code: status) : nil)
}

private func shutdownDone(_ req: UnsafeMutablePointer<uv_shutdown_t>?, _ status: Int32) {
    let context = Unmanaged<WriteContext>.fromOpaque(req!.pointee.data!).takeRetainedValue()
    freeForLibuv(req!)
    context.completion?(status < 0 ? UVOperationError("shutdown", code: status) : nil)
}

private func streamAlloc(_ h: UnsafeMutablePointer<uv_handle_t>?, _ suggested: Int, _ buf: UnsafeMutablePointer<uv_buf_t>?) {
    let stream = Handle.owner(h, as: TCPStream.self)
    if let memory = stream.allocate(suggested), let base = memory.baseAddress, memory.count > 0 {
        buf!.pointee = uv_buf_init(base.assumingMemoryBound(to: CChar.self), UInt32(memory.count))
    } else {
        buf!.pointee = uv_buf_init(nil, 0)
    }
}

private func streamRead(_ s: UnsafeMutablePointer<uv_stream_t>?, _ nread: Int, _ buf: UnsafePointer<uv_buf_t>?) {
    let stream = Handle.owner(s, as: TCPStream.self)
    stream.deliver(nread, buf?.pointee.base, buf?.pointee.len ?? 0)
}

