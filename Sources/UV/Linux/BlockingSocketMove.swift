import CLibUV
import Glibc

extension TCPStream {
    /// A new descriptor for the same socket (`F_DUPFD_CLOEXEC`), which the caller owns and must
    /// close. For handing the socket's reading to other code while this stream does not read.
    public func duplicateDescriptor() throws(UVOperationError) -> Int32 {
        guard let fd = descriptor else { throw UVOperationError("fcntl(F_DUPFD_CLOEXEC)", code: UVError.badDescriptor.code) }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        if copy < 0 { throw UVOperationError("fcntl(F_DUPFD_CLOEXEC)", code: -errno) }
        return copy
    }
}

/// Sets the socket's receive low-water mark (`SO_RCVLOWAT`): readiness is reported only once
/// `bytes` are waiting (or at end of stream). Applies to every descriptor of the socket.
public func setReceiveLowWaterMark(_ socket: Int32, bytes: Int) throws(UVOperationError) {
    var value = Int32(clamping: bytes)
    if setsockopt(socket, SOL_SOCKET, SO_RCVLOWAT, &value, socklen_t(MemoryLayout<Int32>.size)) != 0 {
        throw UVOperationError("setsockopt(SO_RCVLOWAT)", code: -errno)
    }
}

/// The bytes waiting to be read from `socket` (received by the kernel, not yet read), or nil
/// if it cannot tell. Never blocks.
public func receiveQueueBytes(_ socket: Int32) -> Int? {
    let n = datastream_queued_bytes(socket)
    return n >= 0 ? Int(n) : nil
}

/// Socket-to-file moves that block on the file (never on the socket): for the threadpool only
/// (inside `Loop.queueWork`).
public enum BlockingSocketMove {
    /// Why a `move` stopped.
    public enum End: Sendable, Equatable {
        /// The socket had nothing more for now (`EAGAIN`).
        case wouldBlock
        /// `limit` bytes were moved.
        case limitReached
        /// The peer closed its side.
        case endOfStream
        case failed(UVOperationError)
    }

    /// Receives what `socket` has ready without waiting (`MSG_DONTWAIT`) and writes it to `file`
    /// at `offset` on, repeating until the socket has nothing more, `limit` bytes were moved, or
    /// the peer closed; never receives past `limit`, so bytes after it stay in the socket. When
    /// it stops at `limit`, `next` is the first byte already waiting after it (peeked, left in
    /// the socket), if any.
    ///
    /// With `observe` (a digest must see every byte, in order), bytes go through `buffer`: `recv`
    /// then `pwrite`, on one thread, so they are still in its cache for the second copy. Without
    /// it they never enter user space: `splice` moves them from the socket into this thread's
    /// pipe (the kernel hands over its buffers, no copy) and from the pipe into the file (the one
    /// copy, into the page cache), halving the copying of a large upload. `buffer` is then used
    /// only if the thread could not get a pipe or the file refuses `splice` (`EINVAL`: a file
    /// system without splice support, or a file open for appending), which makes the rest of
    /// the move a copy.
    public static func move(from socket: Int32, to file: FileDescriptor, at offset: Int64, limit: Int, buffer: UnsafeMutableRawBufferPointer,
                            target: String, observe: ((UnsafeRawBufferPointer) -> Void)?) -> (moved: Int, end: End, next: UInt8?) {
        let (moved, end): (Int, End)
        if observe == nil, let pipe = ThreadPipe.current() {
            let spliced = spliceBody(from: socket, to: file, at: offset, limit: limit, pipe: pipe, buffer: buffer, target: target)
            if let spliceEnd = spliced.end {
                (moved, end) = (spliced.moved, spliceEnd)
            } else {
                // The file takes no splice: the rest of this move goes by copy.
                let rest = copyBody(from: socket, to: file, at: offset + Int64(spliced.moved), limit: limit - spliced.moved, buffer: buffer, target: target, observe: nil)
                (moved, end) = (spliced.moved + rest.moved, rest.end)
            }
        } else {
            (moved, end) = copyBody(from: socket, to: file, at: offset, limit: limit, buffer: buffer, target: target, observe: observe)
        }
        guard end == .limitReached else { return (moved, end, nil) }
        var byte: UInt8 = 0
        let n = recv(socket, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        return (moved, end, n == 1 ? byte : nil)
    }

    private static func copyBody(from socket: Int32, to file: FileDescriptor, at offset: Int64, limit: Int, buffer: UnsafeMutableRawBufferPointer,
                                 target: String, observe: ((UnsafeRawBufferPointer) -> Void)?) -> (moved: Int, end: End) {
        var moved = 0
        while moved < limit {
            let n: Int
            switch received(recv(socket, buffer.baseAddress, min(buffer.count, limit - moved), Int32(MSG_DONTWAIT)), "recv") {
            case .again: continue
            case .stop(let end): return (moved, end)
            case .bytes(let count): n = count
            }
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            if case let (written, error?) = writeAll(bytes, to: file, at: offset + Int64(moved), target: target) {
                return (moved + written, .failed(error))
            }
            observe?(bytes)
            moved += n
        }
        return (moved, .limitReached)
    }

    /// Returns `end` nil when the file refuses `splice` (`EINVAL`: its file system has no
    /// splice support, or it is open for appending); the bytes already in the pipe are then
    /// written through `buffer`, and `moved` counts them.
    private static func spliceBody(from socket: Int32, to file: FileDescriptor, at offset: Int64, limit: Int, pipe: ThreadPipe,
                                   buffer: UnsafeMutableRawBufferPointer, target: String) -> (moved: Int, end: End?) {
        var moved = 0
        while moved < limit {
            // The pipe is empty here: the socket's splice stops only when the socket has nothing
            // more (EAGAIN; the descriptor is non-blocking), at `limit`, or when the pipe is full.
            let n: Int
            switch received(datastream_splice(socket, nil, pipe.write, nil, UInt(min(pipe.capacity, limit - moved)), UInt32(DATASTREAM_SPLICE_F_MOVE | DATASTREAM_SPLICE_F_NONBLOCK)), "splice") {
            case .again: continue
            case .stop(let end): return (moved, end)
            case .bytes(let count): n = count
            }
            var position = offset + Int64(moved)
            var left = n
            while left > 0 {
                let w = datastream_splice(pipe.read, nil, file.rawValue, &position, UInt(left), UInt32(DATASTREAM_SPLICE_F_MOVE))
                if w < 0 && errno == EINTR { continue }
                if w < 0 && errno == EINVAL {
                    if let error = copyOutOfPipe(pipe, count: left, to: file, at: position, buffer: buffer, target: target) {
                        ThreadPipe.discard()
                        return (moved + (n - left), .failed(error))
                    }
                    return (moved + n, nil)
                }
                if w <= 0 {
                    let code = w == 0 ? UVError.noSpace.code : -errno
                    ThreadPipe.discard()  // it still holds bytes the file did not take
                    return (moved + (n - left), .failed(UVOperationError("splice", target: target, code: code)))
                }
                left -= w
            }
            moved += n
        }
        return (moved, .limitReached)
    }

    /// Reads `count` bytes out of the pipe and writes them to `file` at `offset` on.
    private static func copyOutOfPipe(_ pipe: ThreadPipe, count: Int, to file: FileDescriptor, at offset: Int64, buffer: UnsafeMutableRawBufferPointer,
                                      target: String) -> UVOperationError? {
        var done = 0
        while done < count {
            let r = read(pipe.read, buffer.baseAddress, min(buffer.count, count - done))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { return UVOperationError("read(pipe)", code: r == 0 ? UVError.endOfFile.code : -errno) }
            if let error = writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<r]), to: file, at: offset + Int64(done), target: target).error {
                return error
            }
            done += r
        }
        return nil
    }

    /// What a non-blocking receive from the socket returned (`recv`, or `splice` out of it).
    private enum Received {
        case bytes(Int)
        /// Interrupted: receive again.
        case again
        case stop(End)
    }

    private static func received(_ n: Int, _ operation: String) -> Received {
        if n > 0 { return .bytes(n) }
        if n == 0 { return .stop(.endOfStream) }
        let e = errno
        if e == EINTR { return .again }
        if e == EAGAIN || e == EWOULDBLOCK { return .stop(.wouldBlock) }
        return .stop(.failed(UVOperationError(operation, code: -e)))
    }

    /// `pwrite`s all of `bytes` at `offset` on (repeating after short writes); on failure, how
    /// many were written first. A write of nothing is a full disk.
    private static func writeAll(_ bytes: UnsafeRawBufferPointer, to file: FileDescriptor, at offset: Int64, target: String) -> (written: Int, error: UVOperationError?) {
        var written = 0
        while written < bytes.count {
            let w = pwrite(file.rawValue, bytes.baseAddress! + written, bytes.count - written, off_t(offset) + off_t(written))
            if w < 0 && errno == EINTR { continue }
            if w <= 0 { return (written, UVOperationError("pwrite", target: target, code: w == 0 ? UVError.noSpace.code : -errno)) }
            written += w
        }
        return (written, nil)
    }
}

/// The calling thread's pipe for `splice` (made on first use, 1 MiB when the system allows,
/// closed when the thread ends). Empty between moves; one that may hold stray bytes is discarded.
private final class ThreadPipe {
    let read: Int32
    let write: Int32
    let capacity: Int

    private init(read: Int32, write: Int32, capacity: Int) {
        self.read = read
        self.write = write
        self.capacity = capacity
    }

    deinit {
        close(read)
        close(write)
    }

    static func current() -> ThreadPipe? {
        if let p = pthread_getspecific(key) { return Unmanaged<ThreadPipe>.fromOpaque(p).takeUnretainedValue() }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return nil }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }  // (glibc declares pipe2 only under _GNU_SOURCE)
        _ = fcntl(fds[1], DATASTREAM_F_SETPIPE_SZ, Int32(1 << 20))  // may fail: the default (64 KiB) stays
        let size = fcntl(fds[1], DATASTREAM_F_GETPIPE_SZ)
        let made = ThreadPipe(read: fds[0], write: fds[1], capacity: size > 0 ? Int(size) : 64 * 1024)
        pthread_setspecific(key, Unmanaged.passRetained(made).toOpaque())
        return made
    }

    static func discard() {
        guard let p = pthread_getspecific(key) else { return }
        pthread_setspecific(key, nil)
        Unmanaged<ThreadPipe>.fromOpaque(p).release()
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { if let p = $0 { Unmanaged<ThreadPipe>.fromOpaque(p).release() } }
        return key
    }()
}
