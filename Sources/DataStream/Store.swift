import DataStreamCore
import Glibc
import UV

/// The owner of a small upload handed to `Store.storeSmall` (a connection): told exactly once,
/// on the loop thread, that its upload is stored (under which name) or failed. The store holds
/// the owner until then.
protocol SmallUploadOwner: AnyObject {
    func smallUploadDone(_ result: Result<SeedUploadName, UVOperationError>)
}

/// Where uploads are written and how they are put into place. Owned by the server; used on the
/// loop thread; every file operation goes through uv_fs on libuv's threadpool.
///
/// Layout under the target directory:
/// - `NAME` — stored files, only ever complete and verified (created by link, never overwritten);
/// - `.datastream/partial/ID.part` and `ID.meta` — a native upload in progress (resumable);
/// - a seed upload in progress has no name at all (`O_TMPFILE` in the target directory, linked
///   under its final name when complete: one directory entry per upload, and nothing left behind
///   by a broken upload or a crash); where the file system cannot, it is
///   `.datastream/partial/seed-PID-N.part` (deleted if broken, swept at start-up).
final class Store {
    /// The target directory.
    let directory: String
    /// `.datastream/partial` under it.
    let partialDirectory: String
    /// fsync the file before it is linked into place and the directory after.
    let fsyncEnabled: Bool
    let fs: FileSystem
    /// The target directory, opened once (`O_PATH`): small uploads are created and linked
    /// relative to it, so no call builds or walks its path again. Closed with the store.
    private let directoryDescriptor: FileDescriptor
    private var activeUploads: Set<UploadID> = []
    private var seedCounter: UInt64 = 0
    private var storedSeedCounter: UInt64 = 0
    let pid = getpid()
    /// Seed uploads are written into files without a name first (see `SeedPartial`); turned off
    /// when the file system refuses `O_TMPFILE`, and by tests to exercise the named partials.
    var unnamedSeedFiles = true
    /// Small uploads waiting for the next work item (see `storeSmall`), and emptied batches kept
    /// for reuse. `smallQueue` is read on every small upload; unchecked (see `Connection`):
    /// assigned whole, and the batch it replaces is still held by the caller.
    @exclusivity(unchecked) private var smallQueue = SmallBatch()
    private var spareSmallBatches: [SmallBatch] = []
    private var smallBatchesInFlight = 0

    /// Creates the directories if needed (at start-up, before the loop serves anything) and
    /// checks that the directory is writable.
    init(directory: String, fsync: Bool, loop: Loop) throws(StoreError) {
        self.directory = directory
        self.partialDirectory = directory + "/.datastream/partial"
        self.fsyncEnabled = fsync
        self.fs = FileSystem(loop: loop)
        for d in [directory, directory + "/.datastream", partialDirectory] {
            if mkdir(d, 0o755) != 0 && errno != EEXIST {
                throw StoreError(path: d, reason: String(cString: strerror(errno)))
            }
            var st = stat()
            guard lstat(d, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                throw StoreError(path: d, reason: "not a directory")
            }
        }
        guard access(partialDirectory, W_OK | X_OK) == 0, access(directory, W_OK | X_OK) == 0 else {
            throw StoreError(path: directory, reason: "not writable")
        }
        do throws(UVOperationError) {
            directoryDescriptor = try BlockingFileSystem.openDirectory(directory)
        } catch {
            throw StoreError(path: directory, reason: error.description)
        }
    }

    deinit { try? BlockingFileSystem.close(directoryDescriptor) }

    /// What the start-up sweep of the partial folder did.
    struct PartialSweep: Sendable, Equatable {
        /// Seed partials of processes that are gone (a seed upload cannot resume).
        var seedRemoved = 0
        /// Native partials older than the age limit, or missing their data or metadata file.
        var staleRemoved = 0
        /// Native partials kept for their clients to resume.
        var kept = 0
        /// Receipts of stored uploads older than the age limit (and half-written ones).
        var receiptsRemoved = 0
    }

    /// At start-up, before the loop serves anything (so blocking calls are fine here): removes
    /// seed partials whose process is gone, native partials whose data or metadata file is
    /// missing, and native partials not written to for `maxAge` seconds; keeps the rest for resume.
    /// Receipts of stored uploads (`ID.done`) older than `maxAge` go too.
    func sweepPartials(maxAge: Double) -> PartialSweep {
        var sweep = PartialSweep()
        guard let dir = opendir(partialDirectory) else { return sweep }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        let now = time(nil)
        let present = Set(names)
        for name in names {
            let path = partialDirectory + "/" + name
            if name.hasPrefix("seed-"), name.hasSuffix(".part") {
                let pidText = name.dropFirst(5).prefix { $0 != "-" }
                if let owner = Int32(pidText), owner != pid, kill(owner, 0) != 0, errno == ESRCH {
                    unlink(path)
                    sweep.seedRemoved += 1
                }
                continue
            }
            if name.hasSuffix(".done") || name.hasSuffix(".done.tmp") {
                var st = stat()
                if name.hasSuffix(".tmp") || (lstat(path, &st) == 0 && Double(now - st.st_mtim.tv_sec) > maxAge) {
                    unlink(path)
                    sweep.receiptsRemoved += 1
                }
                continue
            }
            guard name.hasSuffix(".part") || name.hasSuffix(".meta") else { continue }
            let base = String(name.dropLast(5))
            let data = base + ".part", meta = base + ".meta"
            guard name == data || !present.contains(data) else { continue }  // judged with its .part
            var st = stat()
            let complete = present.contains(data) && present.contains(meta)
            let stale = lstat(partialDirectory + "/" + (present.contains(data) ? data : meta), &st) == 0 && Double(now - st.st_mtim.tv_sec) > maxAge
            if !complete || stale {
                unlink(partialDirectory + "/" + data)
                unlink(partialDirectory + "/" + meta)
                sweep.staleRemoved += 1
            } else {
                sweep.kept += 1
            }
        }
        return sweep
    }

    /// The full path of a stored file name.
    func finalPath(_ name: String) -> String { directory + "/" + name }

    // MARK: - Seed uploads

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

    private func openNamedSeedPartial(completion: @escaping (Result<SeedPartial, UVOperationError>) -> Void) {
        let path = nextSeedPartialPath()
        submit(completion) { [fs] () throws(UVOperationError) in
            try fs.open(path, flags: [.readWrite, .create, .truncate, .noFollow], mode: 0o600) { r in
                completion(r.map { SeedPartial(fd: $0, path: path, label: path) })
            }
        }
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

    /// Forgets a seed upload's file: closes it (a file without a name goes with it) and deletes
    /// a named partial.
    func discardSeed(_ partial: SeedPartial) {
        closeQuietly(partial.fd, partial.label)
        if let path = partial.path { unlinkQuietly(path) }
    }

    /// A fresh path for a seed upload's partial file.
    private func nextSeedPartialPath() -> String {
        Store.seedPartialPath(partialDirectory, pid: pid, number: nextSeedPartialNumber())
    }

    /// The number of the next seed partial (its path is built only where one is used).
    private func nextSeedPartialNumber() -> UInt64 {
        seedCounter += 1
        return seedCounter
    }

    /// The path of this process's `number`-th seed partial.
    private static func seedPartialPath(_ partialDirectory: String, pid: pid_t, number: UInt64) -> String {
        "\(partialDirectory)/seed-\(pid)-\(number).part"
    }

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

    private func copy(from src: FileDescriptor, _ srcPath: String, to dst: FileDescriptor, _ dstPath: String, offset: UInt64, length: UInt64, shift: UInt64, buffer: UnsafeMutableRawBufferPointer, completion: @escaping (UVOperationError?) -> Void) {
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

    private func writeAll(_ fd: FileDescriptor, _ path: String, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, completion: @escaping (UVOperationError?) -> Void) {
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

    // MARK: - Native uploads

    /// The partial of a native upload, opened for writing.
    struct NativePartial {
        let fd: FileDescriptor
        let path: String
        let metaPath: String
        /// Bytes already held (a resumed upload), all hashed into `digester`.
        let held: UInt64
        let digester: Digester
    }

    /// What `openNative` found for an upload id.
    enum NativeOpening {
        /// The partial to write the rest of the upload into (new, or resumed with `held` bytes).
        case partial(NativePartial)
        /// The upload was stored before, and the file under its name still holds what was
        /// stored: the client gets that name, and nothing is stored twice.
        case stored(UploadReceipt)
    }

    func partialPath(_ id: UploadID) -> String { "\(partialDirectory)/\(id.hex).part" }
    func metaPath(_ id: UploadID) -> String { "\(partialDirectory)/\(id.hex).meta" }
    func receiptPath(_ id: UploadID) -> String { "\(partialDirectory)/\(id.hex).done" }

    /// Opens the upload `header.uploadID`: answers with its receipt if it was stored before
    /// (and the stored file still holds it), else resumes its partial if the metadata matches,
    /// else creates one. With `refusal` (the disk has no room for a new upload) only an upload
    /// stored before is answered, and anything else fails with `refusal`. The upload id is
    /// marked busy until `release(_:)`.
    func openNative(_ header: FileHeader, refusingNewWith refusal: ProtocolError? = nil, completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        // Not stored before: given the partial's metadata as read (nil if there is none).
        let ifNotStored: (_ meta: [UInt8]?, _ done: @escaping (Result<NativeOpening, ProtocolError>) -> Void) -> Void = { [self] meta, done in
            if let refusal { done(.failure(refusal)) } else { openPartial(header, meta: meta, done) }
        }
        guard !activeUploads.contains(header.uploadID) else {
            completion(.failure(.uploadBusy))
            return
        }
        activeUploads.insert(header.uploadID)
        let done: (Result<NativeOpening, ProtocolError>) -> Void = { [self] r in
            if case .failure = r { activeUploads.remove(header.uploadID) }
            completion(r)
        }
        let receiptPath = receiptPath(header.uploadID), metaPath = metaPath(header.uploadID)
        let lookedUp: (Result<(receipt: [UInt8]?, meta: [UInt8]?), UVOperationError>?) -> Void = { [self] r in
            switch r {
            case nil:
                done(.failure(.storage(UVOperationError("queue_work", code: UVError.canceled.code))))
            case .failure(let e)?:
                done(.failure(.storage(e)))
            case .success(let found)?:
                guard let bytes = found.receipt else { ifNotStored(found.meta, done); return }
                guard let receipt = UploadReceipt(decoding: bytes), receipt.header == header else {
                    unlinkQuietly(receiptPath)
                    ifNotStored(found.meta, done)
                    return
                }
                storedFileMatches(receipt) { [self] matches in
                    if matches {
                        // A partial left beside it (a crash after storing) is of no more use.
                        unlinkQuietly(partialPath(header.uploadID))
                        unlinkQuietly(metaPath)
                        done(.success(.stored(receipt)))
                    } else {
                        unlinkQuietly(receiptPath)
                        ifNotStored(found.meta, done)
                    }
                }
            }
        }
        // One work item reads both: most uploads have neither, and learn it in one round trip.
        do throws(UVOperationError) {
            try runBlocking({ () -> Result<(receipt: [UInt8]?, meta: [UInt8]?), UVOperationError> in
                do throws(UVOperationError) {
                    return .success((try Store.readSmallNow(receiptPath), try Store.readSmallNow(metaPath)))
                } catch {
                    return .failure(error)
                }
            }, completion: lookedUp)
        } catch {
            done(.failure(.storage(error)))
        }
    }

    /// A small file's bytes (at most 4 KiB: receipts and metadata), or nil if there is none
    /// (blocking: threadpool only).
    private static func readSmallNow(_ path: String) throws(UVOperationError) -> [UInt8]? {
        let fd: FileDescriptor
        do throws(UVOperationError) { fd = try BlockingFileSystem.open(path, flags: [.readOnly, .noFollow]) } catch where error.error == .noSuchFile { return nil }
        defer { try? BlockingFileSystem.close(fd, target: path) }
        return try withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 16) { (buffer) throws(UVOperationError) -> [UInt8] in
            let n = try BlockingFileSystem.read(fd, into: buffer, offset: 0, target: path)
            return Array(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    /// Whether the file under a receipt's name still holds what was stored: its size and its
    /// digest (read and hashed again, off the loop). Any other file there (removed, replaced,
    /// changed) is not the upload any more.
    private func storedFileMatches(_ receipt: UploadReceipt, completion: @escaping (Bool) -> Void) {
        let path = finalPath(receipt.storedName), size = receipt.header.size
        submit({ (r: Result<Void, UVOperationError>) in if case .failure = r { completion(false) } }) { [fs] () throws(UVOperationError) in
            try fs.open(path, flags: [.readOnly, .noFollow]) { [self] r in
                guard case .success(let fd) = r else { completion(false); return }
                submit({ (r: Result<Void, UVOperationError>) in if case .failure = r { self.closeQuietly(fd, path); completion(false) } }) { [fs] () throws(UVOperationError) in
                    try fs.size(of: fd, target: path) { [self] r in
                        guard case .success(size) = r else { closeQuietly(fd, path); completion(false); return }
                        let digester = Digester(receipt.header.digest)
                        hashPrefix(fd, path, length: size, into: digester) { [self] e in
                            closeQuietly(fd, path)
                            completion(e == nil && digester.finish() == receipt.digest)
                        }
                    }
                }
            }
        }
    }

    /// Forgets that an upload was stored (its receipt): the client's digest did not match it.
    func forgetStored(_ id: UploadID) { unlinkQuietly(receiptPath(id)) }

    /// Resumes the partial its metadata (`meta`, as read) describes, if it matches `header`;
    /// creates one if there is no metadata.
    private func openPartial(_ header: FileHeader, meta bytes: [UInt8]?, _ done: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        guard let bytes else {
            createNative(header, done)
            return
        }
        guard let recorded = PartialMetadata(decoding: bytes) else {
            done(.failure(.storageFailed(reason: "unreadable metadata \(metaPath(header.uploadID))")))
            return
        }
        let held = recorded.header
        guard held == header else {
            done(.failure(.resumeMismatch(detail: "held upload is \(held.size) bytes, \(held.digest.name), \"\(held.name)\"; announced \(header.size) bytes, \(header.digest.name), \"\(header.name)\"")))
            return
        }
        resumeNative(header, done)
    }

    /// Marks the upload id free again (its connection is done with it).
    func release(_ id: UploadID) { activeUploads.remove(id) }

    private func createNative(_ header: FileHeader, _ completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        let meta = metaPath(header.uploadID), part = partialPath(header.uploadID)
        let record = PartialMetadata(header).encoded
        writeSmallFile(meta, record) { [self] e in
            if let e { completion(.failure(.storage(e))); return }
            submit({ (r: Result<Void, UVOperationError>) in if case .failure(let e) = r { completion(.failure(.storage(e))) } }) { [fs] () throws(UVOperationError) in
                try fs.open(part, flags: [.writeOnly, .create, .truncate, .noFollow], mode: 0o600) { r in
                    switch r {
                    case .failure(let e): completion(.failure(.storage(e)))
                    case .success(let fd): completion(.success(.partial(NativePartial(fd: fd, path: part, metaPath: meta, held: 0, digester: Digester(header.digest)))))
                    }
                }
            }
        }
    }

    private func resumeNative(_ header: FileHeader, _ completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        let meta = metaPath(header.uploadID), part = partialPath(header.uploadID)
        let storage: (UVOperationError) -> Void = { e in completion(.failure(.storage(e))) }
        submit({ (r: Result<Void, UVOperationError>) in if case .failure(let e) = r { storage(e) } }) { [fs] () throws(UVOperationError) in
            try fs.open(part, flags: [.readWrite, .create, .noFollow], mode: 0o600) { [self] r in
                guard case .success(let fd) = r else { if case .failure(let e) = r { storage(e) }; return }
                submit({ (r: Result<Void, UVOperationError>) in if case .failure(let e) = r { self.closeQuietly(fd, part); storage(e) } }) { [fs] () throws(UVOperationError) in
                    try fs.size(of: fd, target: part) { [self] r in
                        switch r {
                        case .failure(let e):
                            closeQuietly(fd, part)
                            storage(e)
                        case .success(let size) where size > header.size:
                            closeQuietly(fd, part)
                            completion(.failure(.resumeMismatch(detail: "partial holds \(size) bytes, more than the announced \(header.size)")))
                        case .success(let size):
                            // Hash what is held so the final digest covers the whole file.
                            let digester = Digester(header.digest)
                            hashPrefix(fd, part, length: size, into: digester) { [self] e in
                                if let e { closeQuietly(fd, part); storage(e); return }
                                let partial = NativePartial(fd: fd, path: part, metaPath: meta, held: size, digester: digester)
                                guard size == header.size else { completion(.success(.partial(partial))); return }
                                // Every byte is held: it may have been stored already, and only
                                // the receipt be missing (a crash between the two).
                                adoptIfStored(partial, header, completion)
                            }
                        }
                    }
                }
            }
        }
    }

    /// For a complete partial that also has another name (it was linked into place, and the
    /// process died before its receipt was written): finds that name, writes the receipt,
    /// removes the partial and answers `.stored`. Otherwise the partial is resumed as usual.
    private func adoptIfStored(_ partial: NativePartial, _ header: FileHeader, _ completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        let directory = directory, sync = fsyncEnabled, digest = partial.digester.finish(), receiptPath = receiptPath(header.uploadID)
        do throws(UVOperationError) {
            let fd = partial.fd, path = partial.path, metaPath = partial.metaPath
            try runBlocking({ Store.adoptIfStoredNow(fd, path: path, metaPath: metaPath, header, digest: digest, directory: directory, receiptPath: receiptPath, sync: sync) }) { found in
                if let receipt = found ?? nil { completion(.success(.stored(receipt))) } else { completion(.success(.partial(partial))) }
            }
        } catch {
            completion(.success(.partial(partial)))
        }
    }

    /// The blocking part of `adoptIfStored` (threadpool only). Linking tries `name`, `name-1`,
    /// ... in order and stops at the first free one, so the search does too.
    private static func adoptIfStoredNow(_ fd: FileDescriptor, path: String, metaPath: String, _ header: FileHeader, digest: [UInt8], directory: String, receiptPath: String, sync: Bool) -> UploadReceipt? {
        guard let held = try? BlockingFileSystem.status(of: fd, target: path), held.links > 1 else { return nil }
        for attempt in 0...NamePolicy.lastAttempt {
            let candidate = NamePolicy.candidate(header.name, attempt: attempt)
            guard let other = try? BlockingFileSystem.status(atPath: directory + "/" + candidate) else { return nil }
            guard other.inode == held.inode, other.device == held.device else { continue }
            let receipt = UploadReceipt(header: header, storedName: candidate, digest: digest)
            guard (try? writeReceiptNow(receipt, to: receiptPath, sync: sync)) != nil else { return nil }
            try? BlockingFileSystem.close(fd, target: path)
            try? BlockingFileSystem.unlink(path)
            try? BlockingFileSystem.unlink(metaPath)
            return receipt
        }
        return nil
    }

    /// Writes a receipt in one step: into `path.tmp`, then renamed over `path`.
    private static func writeReceiptNow(_ receipt: UploadReceipt, to path: String, sync: Bool) throws(UVOperationError) {
        let temporary = path + ".tmp", bytes = receipt.encoded
        let fd = try BlockingFileSystem.open(temporary, flags: [.writeOnly, .create, .truncate, .noFollow], mode: 0o600)
        do throws(UVOperationError) {
            let failure = bytes.withUnsafeBytes { b -> UVOperationError? in
                do throws(UVOperationError) { try BlockingFileSystem.writeAll(fd, buffers: [b], offset: 0, target: temporary) } catch { return error }
                return nil
            }
            if let failure { throw failure }
            if sync { try BlockingFileSystem.fsync(fd, target: temporary) }
        } catch {
            try? BlockingFileSystem.close(fd, target: temporary)
            try? BlockingFileSystem.unlink(temporary)
            throw error
        }
        try BlockingFileSystem.close(fd, target: temporary)
        try BlockingFileSystem.rename(temporary, to: path)
    }

    private func hashPrefix(_ fd: FileDescriptor, _ path: String, length: UInt64, into digester: Digester, completion: @escaping (UVOperationError?) -> Void) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        func step(_ offset: UInt64) {
            guard offset < length else { buffer.deallocate(); completion(nil); return }
            let n = Int(min(UInt64(buffer.count), length - offset))
            do throws(UVOperationError) {
                try fs.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]), offset: Int64(offset), target: path) { r in
                    switch r {
                    case .success(let got) where got > 0:
                        digester.update(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
                        step(offset + UInt64(got))
                    case .success:
                        buffer.deallocate()
                        completion(UVOperationError("fs_read", target: path, code: UVError.endOfFile.code))
                    case .failure(let e):
                        buffer.deallocate()
                        completion(e)
                    }
                }
            } catch {
                buffer.deallocate()
                completion(error)
            }
        }
        step(0)
    }

    // MARK: - Putting files into place

    /// Carries a work item's result from the threadpool to the loop thread (written before `after` runs).
    private final class WorkOutcome<T>: @unchecked Sendable { var result: T? }

    /// Runs `body` (blocking file calls) as one threadpool work item; `completion` gets its
    /// result on the loop's thread (nil only if libuv never ran the item).
    private func runBlocking<T>(_ body: @escaping @Sendable () -> T, completion: @escaping (T?) -> Void) throws(UVOperationError) {
        let outcome = WorkOutcome<T>()
        try fs.loop.queueWork({ outcome.result = body() }, after: { completion(outcome.result) })
    }

    private func runBlocking(_ body: @escaping @Sendable () -> Result<String, UVOperationError>, completion: @escaping (Result<String, UVOperationError>) -> Void) throws(UVOperationError) {
        try runBlocking(body) { (result: Result<String, UVOperationError>?) in
            completion(result ?? .failure(UVOperationError("queue_work", code: UVError.canceled.code)))
        }
    }

    /// Stores a complete, verified partial under `name` (or `name-1`, `name-2`, ... if taken):
    /// fsync (if enabled), close, link into place (never replacing a file), unlink the partial
    /// and its metadata, fsync the directory (if enabled). Completes with the stored name.
    /// All of it is one threadpool work item (blocking calls in sequence), not one round trip per
    /// call: for small uploads the round trips cost more than the work.
    ///
    /// With `receipt` (a native upload: its header and the verified digest), a receipt is
    /// written after the link and before the partial goes (see `UploadReceipt`), so a client
    /// that announces the upload again gets this name instead of a second copy.
    func commit(_ fd: FileDescriptor, partialPath: String, metaPath: String?, name: String, receipt: (header: FileHeader, digest: [UInt8])? = nil, completion: @escaping (Result<String, UVOperationError>) -> Void) {
        let directory = directory, sync = fsyncEnabled
        let receipt = receipt.map { ($0.header, $0.digest, receiptPath($0.header.uploadID)) }
        do throws(UVOperationError) {
            try runBlocking({
                Store.commitNow(fd, partialPath: partialPath, metaPath: metaPath, name: name, directory: directory, sync: sync, receipt: receipt).map { NamePolicy.candidate(name, attempt: $0) }
            }, completion: completion)
        } catch {
            closeQuietly(fd, partialPath)
            completion(.failure(error))
        }
    }

    /// Stores a small seed upload held in memory: write `prefix` then `bytes` into a file that
    /// has no name yet (`O_TMPFILE`), fsync it (if enabled), link it under a generated name (or
    /// `name-1`, ... if taken), close, fsync the directory (if enabled). A file without a name
    /// costs the directory one entry instead of three (partial created, final linked, partial
    /// unlinked) and leaves nothing behind if anything fails or the process dies. Where the file
    /// system has no `O_TMPFILE`, a named partial and `commit`'s steps are used.
    ///
    /// Group commit: at most `maxSmallBatches` threadpool work items store small uploads at a
    /// time; uploads that complete meanwhile wait and go together in the next item. An idle
    /// receiver stores each at once; a busy one pays one threadpool round trip (two thread
    /// wake-ups) per batch instead of per file. `bytes` must stay valid until the store calls
    /// `owner.smallUploadDone`, which it does exactly once; the store holds `owner` until then.
    /// Nothing is allocated per upload (no closure, array or name string): S3 stores thousands
    /// a second.
    func storeSmall(prefix: SeedDigits, bytes: UnsafeRawBufferPointer, owner: SmallUploadOwner) {
        smallQueue.jobs.append(SmallJob(owner: owner, prefix: prefix, bytes: bytes, name: nextSeedName(), partialNumber: nextSeedPartialNumber()))
        submitSmallBatch()
    }

    /// Threadpool work items storing small uploads at most at once (see `storeSmall`). One
    /// batch at a time did best on S3 here (fewer, larger batches, fewer wake-ups); with fsync,
    /// batches overlap so one batch's fsyncs do not hold up the next.
    private var maxSmallBatches: Int { fsyncEnabled ? 4 : 1 }

    /// One small upload in a batch. `owner` is only touched on the loop thread; the work item
    /// reads the rest and writes `result`.
    private struct SmallJob: @unchecked Sendable {
        let owner: SmallUploadOwner
        let prefix: SeedDigits
        let bytes: UnsafeRawBufferPointer
        let name: SeedUploadName
        /// Its named partial's number, used only where the file system has no `O_TMPFILE`.
        let partialNumber: UInt64
        /// Set by the work item; nil if it never ran.
        var result: Result<SeedUploadName, UVOperationError>? = nil
    }

    /// The small uploads of one work item. The store fills one (`smallQueue`) on the loop
    /// thread; once submitted, only the work item touches it until it completes on the loop
    /// thread, which reports each upload and keeps the emptied batch (its array's storage) for
    /// reuse.
    ///
    /// `jobs` skips Swift's run-time exclusivity check (it is appended to on every small
    /// upload): an append releases nothing, and the one change that does, emptying the batch
    /// once every owner was told, releases connections whose `deinit` never reaches a batch.
    private final class SmallBatch: @unchecked Sendable {
        @exclusivity(unchecked) var jobs: [SmallJob] = []
    }

    private func submitSmallBatch() {
        guard smallBatchesInFlight < maxSmallBatches, !smallQueue.jobs.isEmpty else { return }
        let batch = smallQueue
        smallQueue = spareSmallBatches.popLast() ?? SmallBatch()
        smallBatchesInFlight += 1
        let place = SmallUploadPlace(directory: directory, descriptor: directoryDescriptor, partialDirectory: partialDirectory, pid: pid)
        let sync = fsyncEnabled, unnamed = unnamedSeedFiles, directory = directory
        do throws(UVOperationError) {
            try runBlocking({
                // Group commit: each file is fsynced before its link (if enabled), the directory
                // once for the whole batch, and no upload of the batch is reported stored before.
                batch.jobs.withUnsafeMutableBufferPointer { jobs in
                    var anyStored = false
                    var names = SeedUploadName.Formatter()
                    for i in jobs.indices {
                        let r = Store.storeSmallNow(jobs[i], place, sync: sync, unnamed: unnamed, names: &names)
                        if case .success = r { anyStored = true }
                        jobs[i].result = r
                    }
                    guard sync, anyStored else { return }
                    do throws(UVOperationError) { try BlockingFileSystem.syncDirectory(directory) } catch {
                        for i in jobs.indices { jobs[i].result = .failure(error) }
                    }
                }
            }, completion: { [self] (_: Void?) in
                smallBatchesInFlight -= 1
                finishSmallBatch(batch, failure: UVOperationError("queue_work", code: UVError.canceled.code))
                submitSmallBatch()
            })
        } catch {
            smallBatchesInFlight -= 1
            finishSmallBatch(batch, failure: error)
        }
    }

    /// Reports each upload of a batch (`failure` for those it has no result for) and keeps the
    /// batch for reuse.
    private func finishSmallBatch(_ batch: SmallBatch, failure: UVOperationError) {
        for job in batch.jobs { job.owner.smallUploadDone(job.result ?? .failure(failure)) }
        batch.jobs.removeAll(keepingCapacity: true)
        if spareSmallBatches.count < maxSmallBatches { spareSmallBatches.append(batch) }
    }

    /// Where small uploads go: the target directory (by path for messages, by descriptor for
    /// the calls) and, where the file system has no `O_TMPFILE`, the named partials.
    private struct SmallUploadPlace: @unchecked Sendable {
        let directory: String
        let descriptor: FileDescriptor
        let partialDirectory: String
        let pid: pid_t
    }

    /// The blocking body of `storeSmall` for one upload (threadpool only).
    private static func storeSmallNow(_ job: SmallJob, _ place: SmallUploadPlace, sync: Bool, unnamed: Bool, names: inout SeedUploadName.Formatter) -> Result<SeedUploadName, UVOperationError> {
        var fd: FileDescriptor
        var path: String?  // the named partial, if one is used
        do throws(UVOperationError) {
            guard unnamed else { throw UVOperationError("openat(O_TMPFILE)", target: place.directory, code: UVError.operationNotSupported.code) }
            fd = try BlockingFileSystem.openTemporary(in: ".", relativeTo: place.descriptor)
        } catch where [UVError.operationNotSupported, .isDirectory, .invalidArgument].contains(error.error) {
            let named = seedPartialPath(place.partialDirectory, pid: place.pid, number: job.partialNumber)
            do throws(UVOperationError) {
                fd = try BlockingFileSystem.open(named, flags: [.readWrite, .create, .truncate, .noFollow], mode: 0o600)
                path = named
            } catch {
                return .failure(error)
            }
        } catch {
            return .failure(UVOperationError(error.operation, target: place.directory, code: error.error.code))
        }
        let writeError = job.prefix.withUnsafeBytes { prefix in
            // The buffers are listed on the stack; the prefix (digits the file began with) is rare.
            withUnsafeTemporaryAllocation(of: UnsafeRawBufferPointer.self, capacity: 2) { list -> UVOperationError? in
                list[0] = prefix
                list[1] = job.bytes
                do throws(UVOperationError) {
                    try BlockingFileSystem.writeAll(fd, buffers: UnsafeBufferPointer(list), offset: 0, target: path ?? place.directory)
                    return nil
                } catch {
                    return error
                }
            }
        }
        if let writeError {
            try? BlockingFileSystem.close(fd)
            if let path { try? BlockingFileSystem.unlink(path) }
            return .failure(writeError)
        }
        if let path {
            let r = Store.commitNow(fd, partialPath: path, metaPath: nil, name: job.name.description, directory: place.directory, sync: sync, syncDirectory: false)
            if case .failure = r { try? BlockingFileSystem.unlink(path) }
            return r.map { SeedUploadName(utcSeconds: job.name.utcSeconds, counter: job.name.counter, attempt: $0) }
        }
        return Store.linkTemporaryNow(fd, name: job.name, directory: place.directory, relativeTo: place.descriptor, sync: sync, names: &names)  // the batch fsyncs the directory
    }

    /// The blocking end of `storeSmall` and `commitSeed` for a file without a name (threadpool
    /// only): fsync (if enabled), link under the first free candidate name, close. Names are
    /// looked up from `base` (the directory's descriptor) if given, else under `directory`.
    /// Each candidate is formatted on the stack as the C string the call takes.
    private static func linkTemporaryNow(_ fd: FileDescriptor, name: SeedUploadName, directory: String, relativeTo base: FileDescriptor? = nil, sync: Bool, names: inout SeedUploadName.Formatter) -> Result<SeedUploadName, UVOperationError> {
        defer { try? BlockingFileSystem.close(fd) }
        do throws(UVOperationError) {
            if sync { try BlockingFileSystem.fsync(fd, target: directory + "/" + name.description) }
            var stored = name
            while true {
                let failure = withPath(of: stored, under: base == nil ? directory : nil, names: &names) { path -> UVOperationError? in
                    do throws(UVOperationError) { try BlockingFileSystem.linkTemporary(fd, toCString: path, relativeTo: base) } catch { return error }
                    return nil
                }
                guard let failure else { break }
                guard failure.error == .fileExists && stored.attempt < NamePolicy.lastAttempt else { throw failure }
                stored.attempt += 1
            }
            // (the directory is fsynced once per batch, by the caller)
            return .success(stored)
        } catch {
            // A name looked up from `base` is relative: messages get the directory it is in.
            guard base != nil, let target = error.target, !target.hasPrefix("/") else { return .failure(error) }
            return .failure(UVOperationError(error.operation, target: directory + "/" + target, code: error.error.code))
        }
    }

    /// Calls `body` with `name` as a C string on the stack: `directory/name` if a directory is
    /// given, else the name alone.
    private static func withPath<R>(of name: SeedUploadName, under directory: String?, names: inout SeedUploadName.Formatter, _ body: (UnsafePointer<CChar>) -> R) -> R {
        var directory = directory ?? ""
        return directory.withUTF8 { head in
            let lead = head.isEmpty ? 0 : head.count + 1
            return withUnsafeTemporaryAllocation(byteCount: lead + SeedUploadName.capacity, alignment: 1) { out in
                if lead > 0 {
                    out.copyMemory(from: UnsafeRawBufferPointer(head))
                    out[head.count] = 0x2F  // "/"
                }
                _ = names.write(name, into: UnsafeMutableRawBufferPointer(rebasing: out[lead...]))
                return body(out.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
        }
    }

    /// The blocking body of `commit` (threadpool only).
    /// Completes with the collision attempt the name was stored under (`NamePolicy.candidate`).
    private static func commitNow(_ fd: FileDescriptor, partialPath: String, metaPath: String?, name: String, directory: String, sync: Bool, syncDirectory: Bool = true, receipt: (header: FileHeader, digest: [UInt8], path: String)? = nil) -> Result<Int, UVOperationError> {
        do throws(UVOperationError) {
            if sync {
                do throws(UVOperationError) { try BlockingFileSystem.fsync(fd, target: partialPath) } catch {
                    try? BlockingFileSystem.close(fd, target: partialPath)
                    throw error
                }
            }
            try BlockingFileSystem.close(fd, target: partialPath)
            var attempt = 0
            var stored = NamePolicy.candidate(name, attempt: 0)
            while true {
                do throws(UVOperationError) {
                    try BlockingFileSystem.link(partialPath, to: directory + "/" + stored)
                    break
                } catch where error.error == .fileExists && attempt < NamePolicy.lastAttempt {
                    attempt += 1
                    stored = NamePolicy.candidate(name, attempt: attempt)
                }
            }
            if let receipt {
                // Best effort: without it a retry stores a second copy, as before receipts.
                try? writeReceiptNow(UploadReceipt(header: receipt.header, storedName: stored, digest: receipt.digest), to: receipt.path, sync: sync)
            }
            try? BlockingFileSystem.unlink(partialPath)
            if let metaPath { try? BlockingFileSystem.unlink(metaPath) }
            if sync && syncDirectory { try BlockingFileSystem.syncDirectory(directory) }
            return .success(attempt)
        } catch {
            return .failure(error)
        }
    }

    /// Deletes a partial (and its metadata), closing its descriptor first if given.
    func discard(_ fd: FileDescriptor?, path: String, metaPath: String?) {
        if let fd { closeQuietly(fd, path) }
        unlinkQuietly(path)
        if let metaPath { unlinkQuietly(metaPath) }
    }

    // MARK: - Small helpers

    func closeQuietly(_ fd: FileDescriptor, _ path: String) { try? fs.close(fd, target: path) }
    func unlinkQuietly(_ path: String) { try? fs.unlink(path) }

    private func submit<T>(_ completion: @escaping (Result<T, UVOperationError>) -> Void, _ body: () throws(UVOperationError) -> Void) {
        do throws(UVOperationError) { try body() } catch { completion(.failure(error)) }
    }

    private func writeSmallFile(_ path: String, _ bytes: [UInt8], completion: @escaping (UVOperationError?) -> Void) {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { copy.copyMemory(from: $0) }
        let done: (UVOperationError?) -> Void = { e in copy.deallocate(); completion(e) }
        submit({ (r: Result<Void, UVOperationError>) in if case .failure(let e) = r { done(e) } }) { [fs] () throws(UVOperationError) in
            try fs.open(path, flags: [.writeOnly, .create, .truncate, .noFollow], mode: 0o600) { [self] r in
                switch r {
                case .failure(let e): done(e)
                case .success(let fd):
                    writeAll(fd, path, UnsafeRawBufferPointer(rebasing: copy[0..<bytes.count]), at: 0) { [self] e in
                        if let e { closeQuietly(fd, path); done(e); return }
                        let close: () -> Void = {
                            do throws(UVOperationError) { try fs.close(fd, target: path, completion: done) } catch { done(error) }
                        }
                        if fsyncEnabled {
                            do throws(UVOperationError) { try fs.fsync(fd, target: path) { e in if let e { self.closeQuietly(fd, path); done(e) } else { close() } } } catch { closeQuietly(fd, path); done(error) }
                        } else {
                            close()
                        }
                    }
                }
            }
        }
    }
}

/// The target directory cannot be used (at start-up).
struct StoreError: Error, CustomStringConvertible {
    let path: String
    let reason: String
    var description: String { "cannot use directory \(path): \(reason)" }
}
