import CLibUV
import Glibc

/// An open file descriptor, as returned by `FileSystem.open`. Whoever opened it closes it.
public struct FileDescriptor: Hashable, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
}

/// Flags for `FileSystem.open` (the `O_*` flags).
public struct FileOpenFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let readOnly = FileOpenFlags([])
    public static let writeOnly = FileOpenFlags(rawValue: O_WRONLY)
    public static let readWrite = FileOpenFlags(rawValue: O_RDWR)
    public static let create = FileOpenFlags(rawValue: O_CREAT)
    /// With `create`: fail with `EEXIST` if the path exists.
    public static let exclusive = FileOpenFlags(rawValue: O_EXCL)
    public static let truncate = FileOpenFlags(rawValue: O_TRUNC)
    /// Fail with `ELOOP` if the last component is a symbolic link.
    public static let noFollow = FileOpenFlags(rawValue: O_NOFOLLOW)
    public static let directory = FileOpenFlags(rawValue: O_DIRECTORY)
    public static let closeOnExec = FileOpenFlags(rawValue: O_CLOEXEC)
    /// `O_TMPFILE`: the path is a directory, and the file made in it has no name until it is
    /// linked (see `BlockingFileSystem.linkTemporary`); it disappears with its last descriptor
    /// otherwise. Fails (`EOPNOTSUPP`, `EISDIR`, `EINVAL`) where the file system cannot.
    public static let temporaryFile = FileOpenFlags(rawValue: LinuxConstants.oTmpFile | O_DIRECTORY)
}

/// Asynchronous file operations on libuv's threadpool: each call returns at once and its
/// completion runs later on the loop's thread. Nothing here blocks the loop.
///
/// Ownership: each request (`uv_fs_t`) owns its completion until it runs; `uv_fs_req_cleanup`
/// is called after every request; paths are copied by libuv. Byte buffers are *not* copied:
/// they belong to the caller and must stay valid until the completion runs. If a call throws,
/// its completion never runs.
public struct FileSystem {
    public let loop: Loop
    public init(loop: Loop) { self.loop = loop }

    /// Opens `path`. The libuv function is `uv_fs_open`.
    public func open(_ path: String, flags: FileOpenFlags, mode: Int32 = 0o644, completion: @escaping (Result<FileDescriptor, UVOperationError>) -> Void) throws(UVOperationError) {
        try submit("fs_open", path, { uv_fs_open(loop.uv, $0, path, flags.rawValue | O_CLOEXEC, mode, fsDone) }) { req in
            let r = req.pointee.result
            completion(r < 0 ? .failure(UVOperationError("fs_open", target: path, code: Int32(r))) : .success(FileDescriptor(rawValue: Int32(r))))
        }
    }

    /// Writes `buffers` in order (one vectored write) at `offset`, or at the current position when
    /// `offset` is -1. Completes with the byte count written. The libuv function is `uv_fs_write`.
    public func write(_ fd: FileDescriptor, buffers: some Collection<UnsafeRawBufferPointer>, offset: Int64, target: String? = nil, completion: @escaping (Result<Int, UVOperationError>) -> Void) throws(UVOperationError) {
        let count = buffers.count
        try withUnsafeTemporaryAllocation(of: uv_buf_t.self, capacity: max(count, 1)) { (bufs) throws(UVOperationError) in
            for (i, b) in buffers.enumerated() {
                bufs[i] = uv_buf_init(UnsafeMutablePointer(mutating: b.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(b.count))
            }
            // uv_fs_write copies the uv_buf_t array (not the bytes), so the temporary array may go.
            try submit("fs_write", target, { uv_fs_write(loop.uv, $0, fd.rawValue, bufs.baseAddress, UInt32(count), offset, fsDone) }) { req in
                let r = req.pointee.result
                completion(r < 0 ? .failure(UVOperationError("fs_write", target: target, code: Int32(r))) : .success(r))
            }
        }
    }

    /// Reads into `buffer` at `offset`; completes with the byte count (0 at end of file). The libuv function is `uv_fs_read`.
    public func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, offset: Int64, target: String? = nil, completion: @escaping (Result<Int, UVOperationError>) -> Void) throws(UVOperationError) {
        var buf = uv_buf_init(buffer.baseAddress?.assumingMemoryBound(to: CChar.self), UInt32(buffer.count))
        try submit("fs_read", target, { uv_fs_read(loop.uv, $0, fd.rawValue, &buf, 1, offset, fsDone) }) { req in
            let r = req.pointee.result
            completion(r < 0 ? .failure(UVOperationError("fs_read", target: target, code: Int32(r))) : .success(r))
        }
    }

    /// Flushes the file's data and metadata to stable storage. The libuv function is `uv_fs_fsync`.
    public func fsync(_ fd: FileDescriptor, target: String? = nil, completion: @escaping (UVOperationError?) -> Void) throws(UVOperationError) {
        try submit("fs_fsync", target, { uv_fs_fsync(loop.uv, $0, fd.rawValue, fsDone) }) { req in
            completion(statusError("fs_fsync", target, req))
        }
    }

    /// Closes a descriptor. The libuv function is `uv_fs_close`.
    public func close(_ fd: FileDescriptor, target: String? = nil, completion: ((UVOperationError?) -> Void)? = nil) throws(UVOperationError) {
        try submit("fs_close", target, { uv_fs_close(loop.uv, $0, fd.rawValue, fsDone) }) { req in
            completion?(statusError("fs_close", target, req))
        }
    }

    /// Renames, replacing `to` if it exists. The libuv function is `uv_fs_rename`.
    public func rename(_ from: String, to: String, completion: @escaping (UVOperationError?) -> Void) throws(UVOperationError) {
        try submit("fs_rename", from, { uv_fs_rename(loop.uv, $0, from, to, fsDone) }) { req in
            completion(statusError("fs_rename", "\(from) -> \(to)", req))
        }
    }

    /// Makes a hard link; fails with `EEXIST` if `to` exists, so it never replaces a file. The libuv function is `uv_fs_link`.
    public func link(_ from: String, to: String, completion: @escaping (UVOperationError?) -> Void) throws(UVOperationError) {
        try submit("fs_link", from, { uv_fs_link(loop.uv, $0, from, to, fsDone) }) { req in
            completion(statusError("fs_link", to, req))
        }
    }

    /// Removes a file. The libuv function is `uv_fs_unlink`.
    public func unlink(_ path: String, completion: ((UVOperationError?) -> Void)? = nil) throws(UVOperationError) {
        try submit("fs_unlink", path, { uv_fs_unlink(loop.uv, $0, path, fsDone) }) { req in
            completion?(statusError("fs_unlink", path, req))
        }
    }

    /// Creates a directory. The libuv function is `uv_fs_mkdir`.
    public func mkdir(_ path: String, mode: Int32 = 0o755, completion: @escaping (UVOperationError?) -> Void) throws(UVOperationError) {
        try submit("fs_mkdir", path, { uv_fs_mkdir(loop.uv, $0, path, mode, fsDone) }) { req in
            completion(statusError("fs_mkdir", path, req))
        }
    }

    /// The size in bytes of an open file. The libuv function is `uv_fs_fstat`.
    public func size(of fd: FileDescriptor, target: String? = nil, completion: @escaping (Result<UInt64, UVOperationError>) -> Void) throws(UVOperationError) {
        try submit("fs_fstat", target, { uv_fs_fstat(loop.uv, $0, fd.rawValue, fsDone) }) { req in
            let r = req.pointee.result
            completion(r < 0 ? .failure(UVOperationError("fs_fstat", target: target, code: Int32(r))) : .success(req.pointee.statbuf.st_size))
        }
    }

    /// Bytes an unprivileged process may still write on the file system holding `path`
    /// (`f_bavail` × `f_bsize`). The libuv function is `uv_fs_statfs`.
    public func availableBytes(at path: String, completion: @escaping (Result<UInt64, UVOperationError>) -> Void) throws(UVOperationError) {
        try submit("fs_statfs", path, { uv_fs_statfs(loop.uv, $0, path, fsDone) }) { req in
            let r = req.pointee.result
            guard r >= 0, let raw = req.pointee.ptr else {
                completion(.failure(UVOperationError("fs_statfs", target: path, code: Int32(r < 0 ? r : -22))))
                return
            }
            let stats = raw.assumingMemoryBound(to: uv_statfs_t.self).pointee
            completion(.success(stats.f_bavail.multipliedReportingOverflow(by: stats.f_bsize).partialValue))
        }
    }

    /// Truncates an open file to `length`. The libuv function is `uv_fs_ftruncate`.
    public func truncate(_ fd: FileDescriptor, to length: Int64, target: String? = nil, completion: @escaping (UVOperationError?) -> Void) throws(UVOperationError) {
        try submit("fs_ftruncate", target, { uv_fs_ftruncate(loop.uv, $0, fd.rawValue, length, fsDone) }) { req in
            completion(statusError("fs_ftruncate", target, req))
        }
    }

    private func submit(_ operation: String, _ target: String?, _ start: (UnsafeMutablePointer<uv_fs_t>) -> Int32, _ done: @escaping (UnsafeMutablePointer<uv_fs_t>) -> Void) throws(UVOperationError) {
        let req = allocateForLibuv(uv_req_size(UV_FS)).assumingMemoryBound(to: uv_fs_t.self)
        let context = FSContext(done, loop: loop)
        req.pointee.data = Unmanaged.passRetained(context).toOpaque()
        let status = start(req)
        if status >= 0 { loop.threadpoolRequestsInFlight += 1 }
        if status < 0 {
            // The callback will never run: release everything now.
            Unmanaged<FSContext>.fromOpaque(req.pointee.data!).release()
            uv_fs_req_cleanup(req)
            freeForLibuv(req)
            throw UVOperationError(operation, target: target, code: status)
        }
    }
}

private func statusError(_ operation: String, _ target: String?, _ req: UnsafeMutablePointer<uv_fs_t>) -> UVOperationError? {
    let r = req.pointee.result
    return r < 0 ? UVOperationError(operation, target: target, code: Int32(r)) : nil
}

private final class FSContext {
    let done: (UnsafeMutablePointer<uv_fs_t>) -> Void
    unowned let loop: Loop
    init(_ done: @escaping (UnsafeMutablePointer<uv_fs_t>) -> Void, loop: Loop) {
        self.done = done
        self.loop = loop
    }
}

private func fsDone(_ req: UnsafeMutablePointer<uv_fs_t>?) {
    guard let req else { return }
    let context = Unmanaged<FSContext>.fromOpaque(req.pointee.data!).takeRetainedValue()
    context.loop.threadpoolRequestsInFlight -= 1
    // Read every field in `done` before the request is cleaned up and freed.
    context.done(req)
    uv_fs_req_cleanup(req)
    freeForLibuv(req)
}
