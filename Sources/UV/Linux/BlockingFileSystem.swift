import CLibUV
import Glibc

/// File calls that block: libuv's `uv_fs_*` without a callback. Only for use inside
/// `Loop.queueWork` (on the threadpool), never on the loop's thread. Errors are the same typed
/// `UVOperationError`s as `FileSystem`'s.
public enum BlockingFileSystem {
    private static func run(_ operation: String, _ target: String?, _ call: (UnsafeMutablePointer<uv_fs_t>) -> Int32) throws(UVOperationError) -> Int {
        try run(operation, target, call) { $0.pointee.result }
    }

    /// Makes one blocking request and takes `answer` from it before it is cleaned up.
    private static func run<T>(_ operation: String, _ target: String?, _ call: (UnsafeMutablePointer<uv_fs_t>) -> Int32, answer: (UnsafeMutablePointer<uv_fs_t>) -> T) throws(UVOperationError) -> T {
        // The request lives on the stack: a blocking call is over when `call` returns.
        let (status, value) = withUnsafeTemporaryAllocation(of: uv_fs_t.self, capacity: 1) { request -> (Int32, T) in
            let req = request.baseAddress!
            let status = call(req)
            let value = answer(req)
            uv_fs_req_cleanup(req)
            return (status, value)
        }
        if status < 0 { throw UVOperationError(operation, target: target, code: status) }
        return value
    }

    /// The libuv function is `uv_fs_open` (`O_CLOEXEC` is always added).
    public static func open(_ path: String, flags: FileOpenFlags, mode: Int32 = 0o644) throws(UVOperationError) -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try run("fs_open", path) { uv_fs_open(nil, $0, path, flags.rawValue | O_CLOEXEC, mode, nil) }))
    }

    /// Writes all of `buffers` from `offset` on, vectored (one call for all of them, repeated
    /// from where a short write stopped). The libuv function is `uv_fs_write`.
    public static func writeAll(_ fd: FileDescriptor, buffers: [UnsafeRawBufferPointer], offset: Int64, target: String? = nil) throws(UVOperationError) {
        let failure = buffers.withUnsafeBufferPointer { b -> UVOperationError? in
            do throws(UVOperationError) { try writeAll(fd, buffers: b, offset: offset, target: target) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    /// `writeAll` for buffers the caller lists in place (on its stack: no array per call, as
    /// small uploads are stored by the thousand).
    public static func writeAll(_ fd: FileDescriptor, buffers: UnsafeBufferPointer<UnsafeRawBufferPointer>, offset: Int64, target: String? = nil) throws(UVOperationError) {
        // The iovecs live on the stack too.
        let failure = withUnsafeTemporaryAllocation(of: uv_buf_t.self, capacity: buffers.count) { bufs -> UVOperationError? in
            var count = 0
            for b in buffers where b.count > 0 {
                bufs[count] = uv_buf_init(UnsafeMutablePointer(mutating: b.baseAddress!.assumingMemoryBound(to: CChar.self)), UInt32(b.count))
                count += 1
            }
            var first = 0
            var at = offset
            while first < count {
                let n: Int
                do throws(UVOperationError) {
                    n = try run("fs_write", target) { uv_fs_write(nil, $0, fd.rawValue, bufs.baseAddress! + first, UInt32(count - first), at, nil) }
                } catch {
                    return error
                }
                if n == 0 { return UVOperationError("fs_write", target: target, code: UVError.noSpace.code) }
                at += Int64(n)
                var left = n
                while left > 0 {
                    let len = Int(bufs[first].len)
                    if left >= len {
                        left -= len
                        first += 1
                    } else {
                        bufs[first].base += left
                        bufs[first].len -= left
                        left = 0
                    }
                }
            }
            return nil
        }
        if let failure { throw failure }
    }

    /// Opens a directory to name files in it by descriptor (`relativeTo:` below): the path is
    /// resolved once, not on every call. `O_PATH`: the descriptor names the directory and
    /// grants nothing else. The caller owns it and closes it (`close`).
    public static func openDirectory(_ path: String) throws(UVOperationError) -> FileDescriptor {
        try openAt(nil, path, flags: DATASTREAM_O_PATH | O_DIRECTORY | O_CLOEXEC, mode: 0, operation: "open(O_PATH)")
    }

    /// `openat(2)` (libuv has none): `path` looked up from `base` if given and relative.
    private static func openAt(_ base: FileDescriptor?, _ path: String, flags: Int32, mode: Int32, operation: String) throws(UVOperationError) -> FileDescriptor {
        // withCString: a short path such as "." is copied to the stack, where passing the String
        // itself to C made an array on the heap for it (per small upload stored).
        let fd = path.withCString { datastream_openat(base?.rawValue ?? AT_FDCWD, $0, flags, UInt32(mode)) }
        if fd < 0 { throw UVOperationError(operation, target: path, code: -errno) }
        return FileDescriptor(rawValue: fd)
    }

    /// Opens a file without a name in `directory` (Linux `O_TMPFILE`): it gets one only through
    /// `linkTemporary`, and disappears with its last descriptor if it never does, so a crash
    /// leaves nothing behind. Fails (`EOPNOTSUPP`, `EISDIR`) where the file system cannot; the
    /// caller then uses a named partial. A relative `directory` is looked up from `base` (a
    /// descriptor from `openDirectory`) if given. libuv has no `openat`; this is `openat(2)`.
    public static func openTemporary(in directory: String, relativeTo base: FileDescriptor? = nil, mode: Int32 = 0o600) throws(UVOperationError) -> FileDescriptor {
        let flags = FileOpenFlags.temporaryFile.rawValue | O_RDWR | O_CLOEXEC
        return try openAt(base, directory, flags: flags, mode: mode, operation: "openat(O_TMPFILE)")
    }

    /// Gives a file from `openTemporary` the name `path` (looked up from `base`, a descriptor
    /// from `openDirectory`, if given and `path` is relative); fails with `EEXIST` if it is
    /// taken (never replaces a file). libuv has no `linkat`; this is `linkat(2)`: with
    /// `AT_EMPTY_PATH` where allowed, else through `/proc/self/fd/N`.
    public static func linkTemporary(_ fd: FileDescriptor, to path: String, relativeTo base: FileDescriptor? = nil) throws(UVOperationError) {
        let failure = path.withCString { p -> UVOperationError? in
            do throws(UVOperationError) { try linkTemporary(fd, toCString: p, relativeTo: base) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    /// `linkTemporary` with the name as a C string (NUL-terminated UTF-8) that the caller
    /// formatted in place: no `String` is made unless the call fails.
    public static func linkTemporary(_ fd: FileDescriptor, toCString path: UnsafePointer<CChar>, relativeTo base: FileDescriptor? = nil) throws(UVOperationError) {
        let at = base?.rawValue ?? AT_FDCWD
        // AT_EMPTY_PATH (0x1000) names the descriptor itself: no /proc lookup; Linux allows it
        // with CAP_DAC_READ_SEARCH (and, in newer kernels, for a file the caller opened).
        if "".withCString({ linkat(fd.rawValue, $0, at, path, 0x1000) }) == 0 { return }
        if errno != ENOENT && errno != EPERM {
            throw UVOperationError("linkat", target: String(cString: path), code: -errno)
        }
        if linkat(AT_FDCWD, "/proc/self/fd/\(fd.rawValue)", at, path, AT_SYMLINK_FOLLOW) != 0 {
            throw UVOperationError("linkat", target: String(cString: path), code: -errno)
        }
    }

    /// Reads up to `buffer.count` bytes from `offset`; returns how many (0 at the end of the
    /// file). The libuv function is `uv_fs_read`.
    public static func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, offset: Int64, target: String? = nil) throws(UVOperationError) -> Int {
        var buf = uv_buf_init(buffer.baseAddress?.assumingMemoryBound(to: CChar.self), UInt32(buffer.count))
        return try run("fs_read", target) { uv_fs_read(nil, $0, fd.rawValue, &buf, 1, offset, nil) }
    }

    /// The libuv function is `uv_fs_close`.
    public static func close(_ fd: FileDescriptor, target: String? = nil) throws(UVOperationError) {
        _ = try run("fs_close", target) { uv_fs_close(nil, $0, fd.rawValue, nil) }
    }

    /// Fails with `EEXIST` if `to` exists. The libuv function is `uv_fs_link`.
    public static func link(_ from: String, to: String) throws(UVOperationError) {
        _ = try run("fs_link", to) { uv_fs_link(nil, $0, from, to, nil) }
    }

    /// Renames `from` to `to`, replacing `to` if it exists (one step: nobody sees neither or
    /// half of it). The libuv function is `uv_fs_rename`.
    public static func rename(_ from: String, to: String) throws(UVOperationError) {
        _ = try run("fs_rename", to) { uv_fs_rename(nil, $0, from, to, nil) }
    }

    /// What `status(of:)` and `status(atPath:)` report about a file.
    public struct FileStatus: Sendable, Equatable {
        public var device: UInt64
        public var inode: UInt64
        public var size: UInt64
        /// Names the file has (hard links).
        public var links: UInt64
    }

    /// The libuv function is `uv_fs_fstat`.
    public static func status(of fd: FileDescriptor, target: String? = nil) throws(UVOperationError) -> FileStatus {
        try statusRun("fs_fstat", target) { uv_fs_fstat(nil, $0, fd.rawValue, nil) }
    }

    /// The file at `path` itself (a symbolic link is not followed). The libuv function is `uv_fs_lstat`.
    public static func status(atPath path: String) throws(UVOperationError) -> FileStatus {
        try statusRun("fs_lstat", path) { uv_fs_lstat(nil, $0, path, nil) }
    }

    private static func statusRun(_ operation: String, _ target: String?, _ call: (UnsafeMutablePointer<uv_fs_t>) -> Int32) throws(UVOperationError) -> FileStatus {
        try run(operation, target, call) { req in
            let s: uv_stat_t = req.pointee.statbuf
            return FileStatus(device: s.st_dev, inode: s.st_ino, size: s.st_size, links: s.st_nlink)
        }
    }

    /// Takes an exclusive lock on the whole file for the open file description behind `fd`
    /// (`F_OFD_SETLK`; `fd` must be open for writing). It is held until the last descriptor of
    /// that description closes, however the holder ends (a `kill -9` included), and it
    /// conflicts with every other open of the file: another process's, on this machine or (on
    /// a network file system with POSIX locks) another, and this process's own. Returns false,
    /// without waiting, if someone else holds a lock on the file. libuv has no file locks; this
    /// is `fcntl(2)`.
    public static func lockExclusively(_ fd: FileDescriptor, target: String? = nil) throws(UVOperationError) -> Bool {
        var lock = wholeFile(F_WRLCK)
        if fcntl(fd.rawValue, LinuxConstants.fOFDSetLock, &lock) == 0 { return true }
        let code = errno
        if code == EAGAIN || code == EACCES { return false }
        throw UVOperationError("fcntl(F_OFD_SETLK)", target: target, code: -code)
    }

    /// Whether someone holds a lock on the file at `path` that `lockExclusively` would wait for
    /// (`F_OFD_GETLK`): how a sweep leaves alone what a live process is using. A file that is
    /// not there is not locked.
    public static func isLocked(atPath path: String) throws(UVOperationError) -> Bool {
        let fd: FileDescriptor
        do throws(UVOperationError) { fd = try open(path, flags: [.readOnly, .noFollow]) } catch where error.error == .noSuchFile { return false }
        defer { try? close(fd, target: path) }
        var lock = wholeFile(F_WRLCK)
        if fcntl(fd.rawValue, LinuxConstants.fOFDGetLock, &lock) != 0 {
            throw UVOperationError("fcntl(F_OFD_GETLK)", target: path, code: -errno)
        }
        return lock.l_type != Int16(F_UNLCK)
    }

    private static func wholeFile(_ type: Int32) -> flock {
        var lock = flock()
        lock.l_type = Int16(type)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 0
        lock.l_len = 0  // to the end, however the file grows
        lock.l_pid = 0  // required for OFD locks
        return lock
    }

    /// Whether `path` still names the file open as `fd` (the same device and inode): after a
    /// lock is taken, whether the name was removed or given to another file meanwhile.
    public static func names(_ path: String, _ fd: FileDescriptor) throws(UVOperationError) -> Bool {
        let open = try status(of: fd, target: path)
        do throws(UVOperationError) {
            let named = try status(atPath: path)
            return named.inode == open.inode && named.device == open.device
        } catch where error.error == .noSuchFile {
            return false
        }
    }

    /// Cuts the file back (or extends it with zeros) to `length` bytes. The libuv function is
    /// `uv_fs_ftruncate`.
    public static func truncate(_ fd: FileDescriptor, to length: Int64, target: String? = nil) throws(UVOperationError) {
        _ = try run("fs_ftruncate", target) { uv_fs_ftruncate(nil, $0, fd.rawValue, length, nil) }
    }

    /// Bytes free for unprivileged users on the file system holding `path`. The libuv
    /// function is `uv_fs_statfs`.
    public static func availableBytes(at path: String) throws(UVOperationError) -> UInt64 {
        try run("fs_statfs", path, { uv_fs_statfs(nil, $0, path, nil) }) { req in
            guard let raw = req.pointee.ptr else { return 0 }
            let stats = raw.assumingMemoryBound(to: uv_statfs_t.self).pointee
            return stats.f_bavail.multipliedReportingOverflow(by: stats.f_bsize).partialValue
        }
    }

    /// The libuv function is `uv_fs_unlink`.
    public static func unlink(_ path: String) throws(UVOperationError) {
        _ = try run("fs_unlink", path) { uv_fs_unlink(nil, $0, path, nil) }
    }

    /// The libuv function is `uv_fs_fsync`.
    public static func fsync(_ fd: FileDescriptor, target: String? = nil) throws(UVOperationError) {
        _ = try run("fs_fsync", target) { uv_fs_fsync(nil, $0, fd.rawValue, nil) }
    }

    /// Opens, fsyncs and closes a directory (so a new entry in it is durable).
    public static func syncDirectory(_ path: String) throws(UVOperationError) {
        let fd = try run("fs_open", path) { uv_fs_open(nil, $0, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, nil) }
        defer { try? close(FileDescriptor(rawValue: Int32(fd)), target: path) }
        try fsync(FileDescriptor(rawValue: Int32(fd)), target: path)
    }
}
