import DataStreamCore
import Glibc
import UV

/// Seed uploads: partial files without a name (or named where the file system cannot), the
/// commit under a generated name, and the rewrite of a file whose first bytes were digits.
extension Store {

    /// A seed upload's file while it is written. Owned by the connection receiving the upload
    /// (its descriptor by the connection's sink) until `commitSeed` or `discardSeed`.
    struct SeedPartial {
        let fd: FileDescriptor
        /// The partial's path, or nil for a file without a name (`O_TMPFILE`).
        let path: String?
        /// What error messages call it: the path, or the directory the unnamed file is in.
        let label: String
    }

    /// Creates a fresh file for a seed upload: without a name where the file system allows
    /// (the first refusal switches this store to named partials for good), else a named partial.
    func openSeedPartial(completion: @escaping (Result<SeedPartial, UVOperationError>) -> Void) {
        guard unnamedSeedFiles else { openNamedSeedPartial(completion: completion); return }
        let directory = directory
        submit(completion) { [fs] () throws(UVOperationError) in
            try fs.open(directory, flags: [.temporaryFile, .readWrite], mode: 0o600) { [self] r in
                switch r {
                case .success(let fd):
                    completion(.success(SeedPartial(fd: fd, path: nil, label: directory + " (file without a name)")))
                case .failure(let e) where [UVError.operationNotSupported, .isDirectory, .invalidArgument].contains(e.error):
                    unnamedSeedFiles = false
                    openNamedSeedPartial(completion: completion)
                case .failure(let e):
                    completion(.failure(e))
                }
            }
        }
    }

    func openNamedSeedPartial(completion: @escaping (Result<SeedPartial, UVOperationError>) -> Void) {
        let path = nextSeedPartialPath()
        do throws(UVOperationError) {
            try runBlocking({ () -> Result<SeedPartial, UVOperationError> in
                do throws(UVOperationError) { return .success(SeedPartial(fd: try Store.createLockedNow(path), path: path, label: path)) } catch { return .failure(error) }
            }, completion: { completion($0 ?? .failure(UVOperationError("queue_work", target: path, code: UVError.canceled.code))) })
        } catch {
            completion(.failure(error))
        }
    }

    /// Creates a named seed partial, which must not exist yet, and locks it (blocking:
    /// threadpool only): a sweep in any process leaves a locked partial alone.
    static func createLockedNow(_ path: String) throws(UVOperationError) -> FileDescriptor {
        let fd = try BlockingFileSystem.open(path, flags: [.readWrite, .create, .exclusive, .noFollow], mode: 0o600)
        do throws(UVOperationError) {
            _ = try BlockingFileSystem.lockExclusively(fd, target: path)  // a file just made is nobody else's
        } catch {
            try? BlockingFileSystem.unlink(path)
            try? BlockingFileSystem.close(fd, target: path)
            throw error
        }
        return fd
    }

    /// Stores a complete seed upload under `name` (or `name-1`, ... if taken), as `commit` does
    /// for a named partial; a file without a name is fsynced (if enabled), linked and closed,
    /// then the directory fsynced (if enabled). One threadpool work item.
    func commitSeed(_ partial: SeedPartial, name: SeedUploadName, completion: @escaping (Result<String, UVOperationError>) -> Void) {
        if let path = partial.path {
            commit(partial.fd, partialPath: path, metaPath: nil, name: name.description, completion: completion)
            return
        }
        let directory = directory, sync = fsyncEnabled, fd = partial.fd
        do throws(UVOperationError) {
            try runBlocking({
                var names = SeedUploadName.Formatter()
                let r = Store.linkTemporaryNow(fd, name: name, directory: directory, sync: sync, names: &names).map(\.description)
                if sync, case .success = r {
                    do throws(UVOperationError) { try BlockingFileSystem.syncDirectory(directory) } catch { return .failure(error) }
                }
                return r
            }, completion: completion)
        } catch {
            closeQuietly(fd, partial.label)
            completion(.failure(error))
        }
    }

    /// Forgets a seed upload's file: deletes a named partial, then closes it (a file without a
    /// name goes with its descriptor).
    func discardSeed(_ partial: SeedPartial) {
        guard let path = partial.path else { closeQuietly(partial.fd, partial.label); return }
        discard(partial.fd, path: path, metaPath: nil)
    }

    /// A fresh path for a seed upload's partial file.
    func nextSeedPartialPath() -> String {
        Store.seedPartialPath(partialDirectory, pid: pid, number: nextSeedPartialNumber())
    }

    /// The number of the next seed partial (its path is built only where one is used).
    func nextSeedPartialNumber() -> UInt64 {
        seedCounter += 1
        return seedCounter
    }

    /// The path of this process's `number`-th seed partial: the host's name and the process id
    /// keep processes on several machines sharing the directory apart.
    static func seedPartialPath(_ partialDirectory: String, pid: pid_t, number: UInt64) -> String {
        "\(partialDirectory)/seed-\(hostName)-\(pid)-\(number).part"
    }

    /// This machine's name, as far as it is safe in a file name.
    static let hostName: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "host" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let safe = String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") ? $0 : "_" })
        return safe.isEmpty ? "host" : safe
    }()

    /// The generated name of the next seed upload.
    func nextSeedName() -> SeedUploadName {
        storedSeedCounter += 1
        return SeedUploadName(utcSeconds: max(0, time(nil)), counter: storedSeedCounter)
    }

    /// Seed uploads whose file began with digits: writes `prefix` and then the `dataLength` bytes
    /// of `old` into a new seed file, discards the old one, and completes with the new one.
    func rewrite(_ old: SeedPartial, prefix: SeedDigits, dataLength: UInt64, completion: @escaping (Result<SeedPartial, UVOperationError>) -> Void) {
        let oldFD = old.fd, oldPath = old.label
        openSeedPartial { [self] r in
            switch r {
            case .failure(let e):
                discardSeed(old)
                completion(.failure(e))
            case .success(let new):
                let newFD = new.fd, newPath = new.label
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
                _ = buffer.initializeMemory(as: UInt8.self, repeating: 0)
                prefix.withUnsafeBytes { p in buffer.copyMemory(from: p) }
                let finish: (UVOperationError?) -> Void = { [self] error in
                    buffer.deallocate()
                    discardSeed(old)
                    if let error {
                        discardSeed(new)
                        completion(.failure(error))
                    } else {
                        completion(.success(new))
                    }
                }
                // The prefix first, then the old file in chunks, each read then written.
                writeAll(newFD, newPath, UnsafeRawBufferPointer(rebasing: buffer[0..<prefix.count]), at: 0) { [self] e in
                    if let e { finish(e); return }
                    copy(from: oldFD, oldPath, to: newFD, newPath, offset: 0, length: dataLength, shift: UInt64(prefix.count), buffer: buffer, completion: finish)
                }
            }
        }
    }

    func copy(from src: FileDescriptor, _ srcPath: String, to dst: FileDescriptor, _ dstPath: String, offset: UInt64, length: UInt64, shift: UInt64, buffer: UnsafeMutableRawBufferPointer, completion: @escaping (UVOperationError?) -> Void) {
        guard offset < length else { completion(nil); return }
        let n = Int(min(UInt64(buffer.count), length - offset))
        submit({ (r: Result<Void, UVOperationError>) in if case .failure(let e) = r { completion(e) } }) { [fs] () throws(UVOperationError) in
            try fs.read(src, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]), offset: Int64(offset), target: srcPath) { [self] r in
                switch r {
                case .failure(let e): completion(e)
                case .success(0): completion(UVOperationError("fs_read", target: srcPath, code: UVError.endOfFile.code))
                case .success(let got):
                    writeAll(dst, dstPath, UnsafeRawBufferPointer(rebasing: buffer[0..<got]), at: offset + shift) { [self] e in
                        if let e { completion(e); return }
                        copy(from: src, srcPath, to: dst, dstPath, offset: offset + UInt64(got), length: length, shift: shift, buffer: buffer, completion: completion)
                    }
                }
            }
        }
    }

    func writeAll(_ fd: FileDescriptor, _ path: String, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, completion: @escaping (UVOperationError?) -> Void) {
        guard bytes.count > 0 else { completion(nil); return }
        submit({ (r: Result<Void, UVOperationError>) in if case .failure(let e) = r { completion(e) } }) { [fs] () throws(UVOperationError) in
            try fs.write(fd, buffers: CollectionOfOne(bytes), offset: Int64(offset), target: path) { [self] r in
                switch r {
                case .failure(let e): completion(e)
                case .success(let n): writeAll(fd, path, UnsafeRawBufferPointer(rebasing: bytes[n...]), at: offset + UInt64(n), completion: completion)
                }
            }
        }
    }
}
