import CLibUV
import Glibc

/// One client connection of a `ClientSocketGroup`: a plain non-blocking TCP socket, which its
/// owner sends on, reads and closes through the group.
public struct ClientSocket: Hashable, Sendable {
    public let descriptor: Int32
}

/// What a `ClientSocketGroup` reports for one of its sockets.
public struct ClientSocketEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let readable = ClientSocketEvents(rawValue: 1)
    public static let writable = ClientSocketEvents(rawValue: 2)
    /// The connection failed or the peer is gone: the next send or read says how.
    public static let failed = ClientSocketEvents(rawValue: 4)
}

/// Is told when a watched socket of a `ClientSocketGroup` is ready. Held by the group until the
/// socket is closed.
public protocol ClientSocketOwner: AnyObject {
    func socket(_ socket: ClientSocket, isReady events: ClientSocketEvents)
}

/// Many short client connections that the loop watches through a single descriptor: a private
/// epoll instance, registered with the loop as one `Poll`. Each socket is plain (libuv never
/// sees it), so a connection costs only the system calls it needs: `socket`, its options,
/// `bind`, `connect`, `sendmsg`, `shutdown`, one `epoll_ctl` (only if it has to wait), `read`,
/// `close` (which also drops it from the epoll set). A `TCPStream` costs libuv's `ioctl(FIONBIO)`
/// in `uv_tcp_open` and an `epoll_ctl` to forget the socket besides, which for a load generator
/// of small uploads is a measurable share of its CPU. libuv has no such set; this is the one
/// place these system calls are made.
///
/// Owned by whoever made it, on the loop's thread; `close()` it once its sockets are closed.
public final class ClientSocketGroup {
    private let epoll: Int32
    private let poll: Poll
    /// Unchecked: see `ClientSocketOwners`.
    @exclusivity(unchecked) private var watched = ClientSocketOwners()
    private let capacity = 256
    private let events: UnsafeMutablePointer<epoll_event>

    public init(loop: Loop) throws(UVOperationError) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if fd < 0 { throw UVOperationError("epoll_create1", code: -errno) }
        do {
            poll = try Poll(loop: loop, socket: fd)
        } catch {
            Glibc.close(fd)
            throw error
        }
        epoll = fd
        events = .allocate(capacity: capacity)
        do {
            try poll.startReadable { [unowned self] _ in dispatch() }
        } catch {
            close()
            throw error
        }
    }

    /// Stops watching and closes the epoll descriptor (once the loop lets go of it). Sockets
    /// still open stay their owners' to close.
    public func close() {
        guard poll.isOpen else { return }
        watched.removeAll()
        let fd = epoll, events = events
        poll.close {
            Glibc.close(fd)
            events.deallocate()
        }
    }

    /// Starts connecting to `address` and returns the socket at once (see
    /// `TCPStream.connectNow`: the same socket, options and source). A failed connection shows as
    /// the first send's or read's error.
    public func connect(to address: SocketAddress, from source: SocketAddress? = nil, segments: ClientSegments = []) throws(UVOperationError) -> ClientSocket {
        ClientSocket(descriptor: try TCPStream.startConnecting(to: address, from: source, segments: segments))
    }

    /// Sends what the kernel takes of `first` then `second` now: the count taken, 0 if the socket
    /// cannot take any yet (still connecting, or full: watch it for `.writable`). With `more`,
    /// a last segment shorter than the path's largest waits for more bytes or for `shutdown`
    /// (`MSG_MORE`), so a short upload and its end leave together. `sendmsg(2)`.
    public func send(_ socket: ClientSocket, _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer, more: Bool) throws(UVOperationError) -> Int {
        // The two parts are listed on the stack: nothing is allocated per send.
        var parts = (iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count),
                     iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count))
        let flags = Int32(MSG_NOSIGNAL) | (more ? Int32(MSG_MORE) : 0)
        while true {
            let n = withUnsafeMutableBytes(of: &parts) { p in
                var message = msghdr()
                message.msg_iov = p.baseAddress!.assumingMemoryBound(to: iovec.self)
                message.msg_iovlen = 2
                return sendmsg(socket.descriptor, &message, flags)
            }
            if n >= 0 { return n }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return 0
            case let code: throw UVOperationError("sendmsg", code: -code)
            }
        }
    }

    /// Half-closes: the peer sees end of stream after what was sent. `shutdown(2)`.
    public func shutdownWrite(_ socket: ClientSocket) throws(UVOperationError) {
        if Glibc.shutdown(socket.descriptor, Int32(SHUT_WR)) != 0 { throw UVOperationError("shutdown", code: -errno) }
    }

    /// Reads what the socket holds now into `buffer`. `recv(2)`.
    public func read(_ socket: ClientSocket, into buffer: UnsafeMutableRawBufferPointer) -> TCPStream.Peeked {
        TCPStream.receive(socket.descriptor, into: buffer, flags: 0)
    }

    /// Tells `owner` whenever `socket` is ready for what `interest` names (level-triggered:
    /// again on every turn while it stays so), replacing any earlier interest. A failure is
    /// always reported. `epoll_ctl(2)`.
    public func watch(_ socket: ClientSocket, for interest: ClientSocketEvents, owner: ClientSocketOwner) throws(UVOperationError) {
        let fd = socket.descriptor
        let known = watched.generation(of: fd)
        let current = known ?? watched.newGeneration()
        var event = epoll_event()
        event.events = (interest.contains(.readable) ? EPOLLIN.rawValue : 0) | (interest.contains(.writable) ? EPOLLOUT.rawValue : 0)
        event.data.u64 = UInt64(current) << 32 | UInt64(UInt32(bitPattern: fd))
        if epoll_ctl(epoll, known == nil ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event) != 0 {
            throw UVOperationError("epoll_ctl", code: -errno)
        }
        watched.record(owner, of: fd, generation: current)
    }

    /// Closes the socket (which also takes it out of the epoll set) and forgets its owner. `close(2)`.
    public func close(_ socket: ClientSocket) {
        watched.forget(socket.descriptor)
        Glibc.close(socket.descriptor)
    }

    /// The loop found the epoll descriptor readable: hands every ready socket to its owner.
    private func dispatch() {
        while poll.isOpen {
            let n = epoll_wait(epoll, events, Int32(capacity), 0)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            for i in 0..<Int(n) {
                let event = events[i]
                let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: event.data.u64))
                guard let owner = watched.owner(of: fd, generation: UInt32(truncatingIfNeeded: event.data.u64 >> 32)) else { continue }
                var ready: ClientSocketEvents = []
                if event.events & EPOLLIN.rawValue != 0 { ready.insert(.readable) }
                if event.events & EPOLLOUT.rawValue != 0 { ready.insert(.writable) }
                if event.events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 { ready.insert(.failed) }
                owner.socket(ClientSocket(descriptor: fd), isReady: ready)
            }
            if Int(n) < capacity { return }
        }
    }
}
