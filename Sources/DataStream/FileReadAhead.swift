import DataStreamCore
import UV

/// Carries out a `ReadAheadWindow` for a sender: reads its file into a bounded ring on libuv's
/// threadpool, so that a file of any size costs the ring's memory and a file truncated while it
/// is sent ends in a clear failure rather than a fault.
///
/// Owns the file descriptor and the ring. A read in flight holds this object (its completion
/// captures it), so neither goes before the read is done; `close()` closes the descriptor then.
final class FileReadAhead {
    private(set) var window: ReadAheadWindow
    private let fs: FileSystem
    private let fd: FileDescriptor
    private let path: String
    private let fileSize: UInt64
    private var ring = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var closed = false
    /// Called on the loop's thread when more units are ready, or with a message when the file
    /// cannot be read any further.
    var onReady: () -> Void = {}
    var onFailure: (String) -> Void = { _ in }

    /// `fd` is open on `path`, of `fileSize` bytes; nothing is read before `begin`.
    init(fs: FileSystem, fd: FileDescriptor, path: String, fileSize: UInt64) {
        self.fs = fs
        self.fd = fd
        self.path = path
        self.fileSize = fileSize
        window = ReadAheadWindow(start: 0, end: 0, unitSize: 1, capacity: 1, maxReadBytes: 1)
    }

    deinit { ring.deallocate() }

    /// Starts reading a range of the file (another after the last, once it is all read).
    func begin(_ next: ReadAheadWindow) {
        precondition(window.inFlight == nil, "a read is in flight")
        window = next
        if ring.count < next.ringBytes {
            ring.deallocate()
            ring = .allocate(byteCount: next.ringBytes, alignment: 4096)
        }
        pump()
    }

    /// Unit `unit`'s bytes, if read and not yet released. Valid until the unit is released.
    func bytes(of unit: UInt64) -> UnsafeRawBufferPointer? {
        guard let at = window.location(of: unit) else { return nil }
        return UnsafeRawBufferPointer(rebasing: ring[at.ringOffset..<(at.ringOffset + at.count)])
    }

    /// The sender is done with units below `unit`; reads go on into their slots.
    func release(below unit: UInt64) {
        window.release(below: unit)
        pump()
    }

    /// Starts the next read the window allows.
    func pump() {
        guard !closed, let read = window.nextRead() else { return }
        start(read)
    }

    /// Closes the file, at once or when the read in flight is done.
    func close() {
        guard !closed else { return }
        closed = true
        if window.inFlight == nil { try? fs.close(fd) }
    }

    private func start(_ read: ReadAheadWindow.Read) {
        let target = UnsafeMutableRawBufferPointer(rebasing: ring[read.ringOffset..<(read.ringOffset + read.count)])
        do {
            try fs.read(fd, into: target, offset: Int64(read.fileOffset), target: path) { [self] result in
                completed(result)
            }
        } catch {
            _ = window.completed(got: 0)
            closed = true
            try? fs.close(fd)
            onFailure(error.description)
        }
    }

    private func completed(_ result: Result<Int, UVOperationError>) {
        if closed {
            _ = window.completed(got: 0)
            try? fs.close(fd)
            return
        }
        switch result {
        case .failure(let e):
            _ = window.completed(got: 0)
            onFailure(e.description)
        case .success(let got):
            switch window.completed(got: got) {
            case .read:
                pump()
                onReady()
            case .readRest(let rest):
                start(rest)
            case .fileShrank(let end):
                onFailure("\(path) was truncated while it was being sent: it had \(fileSize) bytes and now ends before byte \(end)")
            }
        }
    }
}
