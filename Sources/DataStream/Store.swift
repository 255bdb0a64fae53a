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
    let directoryDescriptor: FileDescriptor
    var activeUploads: Set<UploadID> = []
    var seedCounter: UInt64 = 0
    var storedSeedCounter: UInt64 = 0
    let pid = getpid()
    /// Seed uploads are written into files without a name first (see `SeedPartial`); turned off
    /// when the file system refuses `O_TMPFILE`, and by tests to exercise the named partials.
    var unnamedSeedFiles = true
    /// Stores small seed uploads by group commit (see `storeSmall`).
    let smallUploads: SmallUploadBatcher
    /// The native partials held, by owner, against their caps (filled by `sweepPartials`).
    var partials = PartialLedger(limits: .init())

    /// Creates the directories if needed (at start-up, before the loop serves anything) and
    /// checks that the directory is writable.
    init(directory: String, fsync: Bool, loop: Loop) throws(StoreError) {
        self.directory = directory
        self.partialDirectory = directory + "/.datastream/partial"
        self.fsyncEnabled = fsync
        self.smallUploads = SmallUploadBatcher(fsync: fsync)
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
        smallUploads.store = self
    }

    deinit { try? BlockingFileSystem.close(directoryDescriptor) }

    /// What the start-up sweep of the partial folder did.
    struct PartialSweep: Sendable, Equatable {
        /// Seed partials nobody holds (a seed upload cannot resume).
        var seedRemoved = 0
        /// Native partials older than the age limit, or missing their data or metadata file.
        var staleRemoved = 0
        /// Native partials kept for their clients to resume.
        var kept = 0
        /// Native partials another process is writing now (left alone, counted in `kept`).
        var inUse = 0
        /// Receipts of stored uploads older than the age limit (and half-written ones).
        var receiptsRemoved = 0
    }

    /// A small file half written (`name.tmp`) and not touched for this long is left over from
    /// a process that died writing it; a younger one may be another live process's.
    static let leftoverAge: Double = 60

    /// At start-up, before the loop serves anything (so blocking calls are fine here): removes
    /// seed partials nobody holds, native partials whose data or metadata file is missing, and
    /// native partials not written to for `maxAge` seconds; keeps the rest for resume.
    /// Receipts of stored uploads (`ID.done`) older than `maxAge` go too. Other processes may
    /// share the directory: a partial one of them holds (locked, see `claimPartialNow`) is
    /// theirs and stays whatever its age, and so does a half-written small file younger than
    /// `leftoverAge`.
    func sweepPartials(maxAge: Double, limits: PartialLedger.Limits = .init()) -> PartialSweep {
        partials = PartialLedger(limits: limits)
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
        let age = { [partialDirectory] (name: String) -> Double? in
            var st = stat()
            return lstat(partialDirectory + "/" + name, &st) == 0 ? Double(now - st.st_mtim.tv_sec) : nil
        }
        let held = { [partialDirectory] (name: String) -> Bool in
            // Unknown counts as held: a partial is never removed on a guess.
            (try? BlockingFileSystem.isLocked(atPath: partialDirectory + "/" + name)) ?? true
        }
        for name in names {
            let path = partialDirectory + "/" + name
            if name.hasSuffix(".tmp") {
                if let a = age(name), a > Store.leftoverAge {
                    unlink(path)
                    if name.hasSuffix(".done.tmp") { sweep.receiptsRemoved += 1 }
                }
                continue
            }
            if name.hasPrefix("seed-"), name.hasSuffix(".part") {
                if !held(name) {
                    unlink(path)
                    sweep.seedRemoved += 1
                }
                continue
            }
            if name.hasSuffix(".done") {
                if let a = age(name), a > maxAge {
                    unlink(path)
                    sweep.receiptsRemoved += 1
                }
                continue
            }
            guard name.hasSuffix(".part") || name.hasSuffix(".meta") else { continue }
            let base = String(name.dropLast(5))
            let data = base + ".part", meta = base + ".meta"
            guard name == data || !present.contains(data) else { continue }  // judged with its .part
            let inUse = present.contains(data) && held(data)
            let complete = present.contains(data) && present.contains(meta)
            let stale = (age(present.contains(data) ? data : meta) ?? 0) > maxAge
            if !inUse && (!complete || stale) {
                unlink(partialDirectory + "/" + data)
                unlink(partialDirectory + "/" + meta)
                sweep.staleRemoved += 1
            } else {
                sweep.kept += 1
                if inUse { sweep.inUse += 1 }
                // Counted against its owner's cap (read once, at start-up, before serving).
                var st = stat()
                let bytes = lstat(partialDirectory + "/" + data, &st) == 0 ? UInt64(max(0, st.st_size)) : 0
                let owner = (try? Store.readSmallNow(partialDirectory + "/" + meta)).flatMap { $0 }.flatMap(PartialMetadata.init(decoding:))?.owner ?? []
                if let id = UploadID(hex: base) { partials.add(id, owner: owner, bytes: bytes) }
            }
        }
        return sweep
    }

    /// The full path of a stored file name.
    func finalPath(_ name: String) -> String { directory + "/" + name }

    // MARK: - Putting files into place

    /// Carries a work item's result from the threadpool to the loop thread (written before `after` runs).
    final class WorkOutcome<T>: @unchecked Sendable { var result: T? }

    /// Runs `body` (blocking file calls) as one threadpool work item; `completion` gets its
    /// result on the loop's thread (nil only if libuv never ran the item).
    func runBlocking<T>(_ body: @escaping @Sendable () -> T, completion: @escaping (T?) -> Void) throws(UVOperationError) {
        let outcome = WorkOutcome<T>()
        try fs.loop.queueWork({ outcome.result = body() }, after: { completion(outcome.result) })
    }

    func runBlocking(_ body: @escaping @Sendable () -> Result<String, UVOperationError>, completion: @escaping (Result<String, UVOperationError>) -> Void) throws(UVOperationError) {
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
        let id = receipt?.header.uploadID
        let receipt = receipt.map { ($0.header, $0.digest, receiptPath($0.header.uploadID)) }
        do throws(UVOperationError) {
            try runBlocking({
                Store.commitNow(fd, partialPath: partialPath, metaPath: metaPath, name: name, directory: directory, sync: sync, receipt: receipt).map { NamePolicy.candidate(name, attempt: $0) }
            }, completion: { [self] (r: Result<String, UVOperationError>) in
                if case .success = r, let id { partials.remove(id) }
                completion(r)
            })
        } catch {
            closeQuietly(fd, partialPath)
            completion(.failure(error))
        }
    }

    /// Stores a small seed upload held in memory (see `SmallUploadBatcher.enqueue`) under the
    /// next generated name.
    func storeSmall(prefix: SeedDigits, bytes: UnsafeRawBufferPointer, owner: SmallUploadOwner) {
        smallUploads.enqueue(prefix: prefix, bytes: bytes, owner: owner, name: nextSeedName(), partialNumber: nextSeedPartialNumber())
    }

    // MARK: - Small helpers

    func closeQuietly(_ fd: FileDescriptor, _ path: String) { try? fs.close(fd, target: path) }
    /// Closes `fd` if given, then calls `then` (whether or not the close succeeded).
    func close(_ fd: FileDescriptor?, _ path: String, then: @escaping () -> Void) {
        guard let fd else { then(); return }
        do throws(UVOperationError) { try fs.close(fd, target: path) { _ in then() } } catch { then() }
    }
    func unlinkQuietly(_ path: String) { try? fs.unlink(path) }

    func submit<T>(_ completion: @escaping (Result<T, UVOperationError>) -> Void, _ body: () throws(UVOperationError) -> Void) {
        do throws(UVOperationError) { try body() } catch { completion(.failure(error)) }
    }
}

/// The target directory cannot be used (at start-up).
struct StoreError: Error, CustomStringConvertible {
    let path: String
    let reason: String
    var description: String { "cannot use directory \(path): \(reason)" }
}
