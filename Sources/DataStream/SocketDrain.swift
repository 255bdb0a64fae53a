import DataStreamCore
import Glibc
import UV

/// Moves the rest of a large upload's bytes from its socket straight into its partial file on
/// libuv's threadpool: one work item moves what the socket has ready into the file. Without a
/// digest to compute (seed uploads) the bytes never enter user space: `splice` through the
/// thread's pipe, one copy in all (faster and cheaper than receiving then writing). With one, the work
/// item receives, hashes and writes on one thread, so the bytes are still in that core's cache
/// when the page-cache copy reads them.
/// The loop thread only learns when the socket is readable (a `Poll` on a duplicate of the
/// socket's descriptor) and queues the next work item; nothing blocks it.
///
/// Why: handing each read to a worker through shared slabs made the worker copy bytes another
/// core had just received; on this 2-core VM that copy into the page cache cost several times
/// more than the same copy from a hot buffer, and a third busy thread competed with the
/// sender for the cores.
///
/// Owned by its `Connection` from the moment the upload's queued writes are flushed and the
/// stream stops reading until `onEnd` runs; it owns the duplicate descriptor and its poll
/// handle. The 256 KiB receive buffer belongs to the threadpool thread running the work item
/// (one per thread, kept for the thread's life), so memory does not grow with the drains. It never receives past the upload's last byte, so whatever follows
/// (an END frame, trailing bytes, end of stream) is left to the stream's normal reading.
final class SocketDrain {
    /// How a drain ended.
    enum End {
        /// Every expected byte is in the file.
        case complete
        /// The peer closed before all expected bytes came.
        case endOfStream
        case failed(UVOperationError)
        /// `cancel()` was called (the connection is closing).
        case cancelled
    }

    /// Bytes moved by one work item at most, so the loop hears of progress regularly.
    static let bytesPerWorkItem = 8 << 20
    static let bufferSize = 256 * 1024

    private let loop: Loop
    private let socket: Int32
    private let poll: Poll
    private let file: FileDescriptor
    private let path: String
    private let work: Work
    private var offset: UInt64
    private var remaining: UInt64
    private var working = false
    private var cancelled = false
    private var ended = false
    /// The poll reported an error; the work item now running is to learn the socket's own.
    private var pollError: UVOperationError?
    /// `n` more bytes are in the file (called on the loop thread after each work item); with
    /// the last of them, the first byte already waiting after the upload, if any (left in the
    /// socket: an END frame, or bytes a seed client should not have sent).
    private let onProgress: (UInt64, UInt8?) -> Void
    private let onEnd: (End) -> Void

    /// What a work item touches, handed to the threadpool; only one work item runs at a time.
    private final class Work: @unchecked Sendable {
        let digester: Digester?
        var result: (moved: Int, end: BlockingSocketMove.End, next: UInt8?) = (0, .wouldBlock, nil)
        init(digester: Digester?) { self.digester = digester }
    }

    /// The calling threadpool thread's receive buffer (made on its first drain).
    private static func threadBuffer() -> UnsafeMutableRawBufferPointer {
        if let p = pthread_getspecific(bufferKey) { return UnsafeMutableRawBufferPointer(start: p, count: bufferSize) }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 64)
        pthread_setspecific(bufferKey, b.baseAddress)
        return b
    }

    private static let bufferKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }  // allocate(byteCount:alignment:) is malloc-backed here
        return key
    }()

    /// Starts draining `remaining` bytes from `stream` (which must not be reading) into `file`
    /// from `offset`, hashing them with `digester` (touched only by the work item until `onEnd`).
    init(loop: Loop, stream: TCPStream, file: FileDescriptor, path: String, offset: UInt64, remaining: UInt64, digester: Digester?,
         onProgress: @escaping (UInt64, UInt8?) -> Void, onEnd: @escaping (End) -> Void) throws(UVOperationError) {
        self.loop = loop
        self.file = file
        self.path = path
        self.offset = offset
        self.remaining = remaining
        self.onProgress = onProgress
        self.onEnd = onEnd
        work = Work(digester: digester)
        socket = try stream.duplicateDescriptor()
        do {
            poll = try Poll(loop: loop, socket: socket)
        } catch {
            Glibc.close(socket)
            throw error
        }
    }

    func start() {
        // The socket may already hold bytes: try at once, then wait for readiness.
        runWork()
    }

    /// The bytes waiting in the socket, which the drain has not been woken for yet (it asks to
    /// be woken only once `wakeBytes` wait): a slow client's bytes are counted as it sends them.
    var waitingBytes: Int { receiveQueueBytes(socket) ?? 0 }

    /// Ends the drain as soon as no work item is running (`onEnd(.cancelled)`).
    func cancel() {
        cancelled = true
        if !working { end(.cancelled) }
    }

    /// Readiness is asked for only once this much is waiting (or all that is left): a drain
    /// that outruns its sender would otherwise wake for every segment, costing a loop round
    /// trip and a thread wake-up per few KiB (seen as a run at half speed, twice the CPU).
    static let wakeBytes = 512 * 1024

    private func arm() {
        do {
            try setReceiveLowWaterMark(socket, bytes: Int(min(remaining, UInt64(SocketDrain.wakeBytes))))
            try poll.startReadable { [self] error in
                poll.stop()
                // libuv reports a socket error (EPOLLERR, e.g. after a reset) as EBADF: one more
                // receive tells what really happened (ECONNRESET, end of stream, or bytes left).
                pollError = error.map { UVOperationError("poll", code: $0.code) }
                runWork()
            }
        } catch {
            end(.failed(error))
        }
    }

    private func runWork() {
        guard !ended else { return }
        working = true
        let work = self.work, socket = self.socket, file = self.file, path = self.path
        let at = Int64(offset), limit = Int(min(remaining, UInt64(SocketDrain.bytesPerWorkItem)))
        do {
            try loop.queueWork({
                // Without a digest the bytes need not enter user space (splice); with one they must.
                work.result = BlockingSocketMove.move(from: socket, to: file, at: at, limit: limit, buffer: SocketDrain.threadBuffer(), target: path,
                                                      observe: work.digester.map { d in { d.update($0) } })
            }, after: { [self] in
                working = false
                finishedWork()
            })
        } catch {
            working = false
            end(.failed(error))
        }
    }

    private func finishedWork() {
        let (moved, how, next) = work.result
        if moved > 0 {
            offset += UInt64(moved)
            remaining -= UInt64(moved)
            onProgress(UInt64(moved), remaining == 0 ? next : nil)
        }
        if cancelled { end(.cancelled); return }
        switch how {
        case .failed(let e): end(.failed(e))
        case .endOfStream: end(remaining == 0 ? .complete : .endOfStream)
        case .wouldBlock where pollError != nil:
            end(.failed(pollError!))
        case .limitReached, .wouldBlock:
            pollError = nil
            if remaining == 0 { end(.complete) } else if how == .limitReached { runWork() } else { arm() }
        }
    }

    private func end(_ how: End) {
        guard !ended else { return }
        ended = true
        let socket = self.socket
        try? setReceiveLowWaterMark(socket, bytes: 1)  // any byte makes the stream readable again
        poll.close { Glibc.close(socket) }  // the duplicate goes once libuv no longer watches it
        onEnd(how)
    }
}
