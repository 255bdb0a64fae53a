import DataStreamCore
import Glibc
import UV

/// Told about the progress of an `UploadSink` (the connection that feeds it).
protocol UploadSinkOwner: AnyObject {
    /// `count` buffered bytes reached the file (or were dropped): they no longer count against budgets.
    func sinkReleased(_ count: Int)
    /// A write failed; queued bytes are dropped and flushes report the error. Called once.
    func sinkFailed(_ error: UVOperationError)
}

/// Writes one upload's bytes to its partial file, in order, with one vectored write in flight.
///
/// Owned by the connection driver. Received bytes stay in their receive slabs (no copy) until
/// their write completes; while one write is in flight, new ranges queue up and go together in
/// the next write (several writes to one file fight over the kernel's per-file lock). With a
/// digest, written bytes are hashed in file order before their slab is released.
final class UploadSink {
    private struct Segment {
        let slab: Slab
        let start: Int
        var count: Int
        var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: slab.memory[start..<(start + count)]) }
    }

    /// The file's path, for error messages (a seed partial's is known only once it is open).
    private(set) var path: String
    private let fs: FileSystem
    private let pool: BufferPool
    private(set) var fd: FileDescriptor?
    private weak var owner: UploadSinkOwner?
    private var queue: [Segment] = []
    private var inFlight: [Segment] = []
    private var queuedBytes = 0
    /// The file offset of the next byte to write.
    private(set) var writeOffset: UInt64
    private(set) var digester: Digester?
    private(set) var failure: UVOperationError?
    private var flushWaiters: [(UVOperationError?) -> Void] = []
    private var closed = false

    init(path: String, fs: FileSystem, pool: BufferPool, owner: UploadSinkOwner, startOffset: UInt64 = 0, digester: Digester? = nil) {
        self.path = path
        self.fs = fs
        self.pool = pool
        self.owner = owner
        self.writeOffset = startOffset
        self.digester = digester
        queue.reserveCapacity(8)
        inFlight.reserveCapacity(8)
    }

    /// `n` bytes were written to the file at `writeOffset` by someone else (a `SocketDrain`)
    /// while this sink had nothing queued or in flight; they were already hashed.
    func advance(by n: UInt64) {
        precondition(queue.isEmpty && inFlight.isEmpty, "advance with writes pending")
        writeOffset += n
    }

    /// Nothing queued and no write in flight.
    var isIdle: Bool { queue.isEmpty && inFlight.isEmpty }

    /// The descriptor is open: queued writes may start. `path` names the file if the sink was
    /// made before its path was known.
    func opened(_ fd: FileDescriptor, path: String? = nil) {
        self.fd = fd
        if let path { self.path = path }
        pump()
    }

    /// The open failed: everything queued is dropped.
    func openFailed(_ error: UVOperationError) {
        fail(error)
    }

    /// Queues `count` bytes of `slab` from `start` (the slab gains a reference until they are written).
    func append(_ slab: Slab, start: Int, count: Int) {
        guard count > 0 else { return }
        if failure != nil {
            owner?.sinkReleased(count)
            return
        }
        if let last = queue.last, last.slab === slab, last.start + last.count == start {
            queue[queue.count - 1].count += count
        } else {
            pool.retain(slab)
            queue.append(Segment(slab: slab, start: start, count: count))
        }
        queuedBytes += count
        pump()
    }

    /// Calls `completion` once every queued byte is written (or the sink has failed).
    func flush(_ completion: @escaping (UVOperationError?) -> Void) {
        if failure != nil || (queue.isEmpty && inFlight.isEmpty && (fd != nil || closed)) {
            completion(failure)
            return
        }
        flushWaiters.append(completion)
    }

    /// Closes the descriptor (after any write in flight); `completion` runs when it is closed.
    func close(_ completion: @escaping () -> Void) {
        flush { [self] _ in
            guard let fd, !closed else { completion(); return }
            closed = true
            self.fd = nil
            do throws(UVOperationError) { try fs.close(fd, target: path) { _ in completion() } } catch { completion() }
        }
    }

    /// Waits for any write in flight, then hands the descriptor over (nil if a commit took it):
    /// for a caller that must act on the file before it closes it, such as removing a partial
    /// while its lock is still held.
    func finish(_ completion: @escaping (FileDescriptor?) -> Void) {
        flush { [self] _ in completion(takeDescriptor()) }
    }

    /// Hands the descriptor over to the caller (for commit); the sink no longer closes it.
    func takeDescriptor() -> FileDescriptor? {
        defer { fd = nil; closed = true }
        return fd
    }

    private func pump() {
        guard let fd, inFlight.isEmpty, !queue.isEmpty, failure == nil else {
            if inFlight.isEmpty && queue.isEmpty && fd != nil { notifyFlushed() }
            return
        }
        swap(&queue, &inFlight)
        let total = queuedBytes
        queuedBytes = 0
        do throws(UVOperationError) {
            try fs.write(fd, buffers: inFlight.lazy.map { $0.bytes }, offset: Int64(writeOffset), target: path) { [self] result in
                switch result {
                case .success(let written): wrote(written, of: total)
                case .failure(let error): fail(error)
                }
            }
        } catch {
            fail(error)
        }
    }

    private func wrote(_ written: Int, of total: Int) {
        if written == 0 && total > 0 {
            fail(UVOperationError("fs_write", target: path, code: UVError.noSpace.code))
            return
        }
        var remaining = written
        var index = 0
        while index < inFlight.count && remaining > 0 {
            let take = min(remaining, inFlight[index].count)
            let segment = inFlight[index]
            digester?.update(UnsafeRawBufferPointer(rebasing: segment.bytes[0..<take]))
            remaining -= take
            if take == segment.count {
                pool.release(segment.slab)
                index += 1
            } else {
                inFlight[index] = Segment(slab: segment.slab, start: segment.start + take, count: segment.count - take)
            }
        }
        writeOffset += UInt64(written)
        owner?.sinkReleased(written)
        inFlight.removeFirst(index)
        if !inFlight.isEmpty {
            // A short write: the rest goes first in the next write.
            queuedBytes += inFlight.reduce(0) { $0 + $1.count }
            queue.insert(contentsOf: inFlight, at: 0)
            inFlight.removeAll(keepingCapacity: true)
        }
        pump()
    }

    private func fail(_ error: UVOperationError) {
        let first = failure == nil
        if first { failure = error }
        let dropped = inFlight + queue
        inFlight.removeAll()
        queue.removeAll()
        queuedBytes = 0
        for s in dropped {
            pool.release(s.slab)
            owner?.sinkReleased(s.count)
        }
        if first { owner?.sinkFailed(error) }
        notifyFlushed()
    }

    private func notifyFlushed() {
        guard !flushWaiters.isEmpty else { return }
        let waiters = flushWaiters
        flushWaiters.removeAll()
        for w in waiters { w(failure) }
    }
}

extension ProtocolError {
    /// A failed file operation as the client hears it: the operation and the error, never the
    /// server's path (the client knows its upload by its id); disk full (ENOSPC, EDQUOT) says so.
    /// The server's own log lines name the file.
    static func storage(_ error: UVOperationError) -> ProtocolError {
        let reason = "\(error.operation) failed: \(error.error)"
        if error.error == .noSpace || error.error.code == -EDQUOT { return .diskFull(reason: reason) }
        return .storageFailed(reason: reason)
    }
}
