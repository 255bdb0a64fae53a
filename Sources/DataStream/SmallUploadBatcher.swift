import DataStreamCore
import Glibc
import UV

/// Small seed uploads held in memory, stored by group commit: one threadpool work item takes
/// every small upload that completed meanwhile.
///
/// Owned by the `Store`, which attaches itself at its init; used on the loop thread, except the
/// batch a work item is writing.
final class SmallUploadBatcher {
    /// The store that owns it (the place, the work items): set once by `Store.init`. Unowned
    /// and unchecked: the batcher lives inside its store, and a batch in flight holds the store
    /// (as the store's own work items do), so the store outlives every use. (A weak reference
    /// would give the store a side table, and every retain of it a slow path.)
    unowned(unsafe) var store: Store?
    /// Threadpool work items storing small uploads at most at once (see `enqueue`). One
    /// batch at a time means fewer, larger batches and fewer wake-ups; with fsync, batches
    /// overlap so one batch's fsyncs do not hold up the next.
    private let maxBatches: Int
    /// Small uploads waiting for the next work item, and emptied batches kept for reuse.
    /// `queue` is read on every small upload; unchecked (see `Connection`): assigned whole, and
    /// the batch it replaces is still held by the caller.
    @exclusivity(unchecked) private var queue = SmallBatch()
    private var spare: [SmallBatch] = []
    private var inFlight = 0

    init(fsync: Bool) { maxBatches = fsync ? 4 : 1 }

    /// Stores a small seed upload held in memory: write `prefix` then `bytes` into a file that
    /// has no name yet (`O_TMPFILE`), fsync it (if enabled), link it under a generated name (or
    /// `name-1`, ... if taken), close, fsync the directory (if enabled). A file without a name
    /// costs the directory one entry instead of three (partial created, final linked, partial
    /// unlinked) and leaves nothing behind if anything fails or the process dies. Where the file
    /// system has no `O_TMPFILE`, a named partial and `commit`'s steps are used.
    ///
    /// Group commit: at most `maxBatches` threadpool work items store small uploads at a
    /// time; uploads that complete meanwhile wait and go together in the next item. An idle
    /// receiver stores each at once; a busy one pays one threadpool round trip (two thread
    /// wake-ups) per batch instead of per file. `bytes` must stay valid until the store calls
    /// `owner.smallUploadDone`, which it does exactly once; the store holds `owner` until then.
    /// Nothing is allocated per upload (no closure, array or name string).
    func enqueue(prefix: SeedDigits, bytes: UnsafeRawBufferPointer, owner: SmallUploadOwner, name: SeedUploadName, partialNumber: UInt64) {
        queue.jobs.append(SmallJob(owner: owner, prefix: prefix, bytes: bytes, name: name, partialNumber: partialNumber))
        submit()
    }


    /// One small upload in a batch. `owner` is only touched on the loop thread; the work item
    /// reads the rest and writes `result`.
    struct SmallJob: @unchecked Sendable {
        let owner: SmallUploadOwner
        let prefix: SeedDigits
        let bytes: UnsafeRawBufferPointer
        let name: SeedUploadName
        /// Its named partial's number, used only where the file system has no `O_TMPFILE`.
        let partialNumber: UInt64
        /// Set by the work item; nil if it never ran.
        var result: Result<SeedUploadName, UVOperationError>? = nil
    }

    /// The small uploads of one work item. The batcher fills one (`queue`) on the loop
    /// thread; once submitted, only the work item touches it until it completes on the loop
    /// thread, which reports each upload and keeps the emptied batch (its array's storage) for
    /// reuse.
    ///
    /// `jobs` skips Swift's run-time exclusivity check (it is appended to on every small
    /// upload): an append releases nothing, and the one change that does, emptying the batch
    /// once every owner was told, releases connections whose `deinit` never reaches a batch.
    final class SmallBatch: @unchecked Sendable {
        @exclusivity(unchecked) var jobs: [SmallJob] = []
    }

    private func submit() {
        guard inFlight < maxBatches, !queue.jobs.isEmpty, let store else { return }
        let batch = queue
        queue = spare.popLast() ?? SmallBatch()
        inFlight += 1
        let place = SmallUploadPlace(directory: store.directory, descriptor: store.directoryDescriptor, partialDirectory: store.partialDirectory, pid: store.pid)
        let sync = store.fsyncEnabled, unnamed = store.unnamedSeedFiles, directory = store.directory
        do throws(UVOperationError) {
            try store.runBlocking({
                // Group commit: each file is fsynced before its link (if enabled), the directory
                // once for the whole batch, and no upload of the batch is reported stored before.
                batch.jobs.withUnsafeMutableBufferPointer { jobs in
                    var anyStored = false
                    var names = SeedUploadName.Formatter()
                    for i in jobs.indices {
                        let r = SmallUploadBatcher.storeNow(jobs[i], place, sync: sync, unnamed: unnamed, names: &names)
                        if case .success = r { anyStored = true }
                        jobs[i].result = r
                    }
                    guard sync, anyStored else { return }
                    do throws(UVOperationError) { try BlockingFileSystem.syncDirectory(directory) } catch {
                        for i in jobs.indices { jobs[i].result = .failure(error) }
                    }
                }
            }, completion: { [self, store] (_: Void?) in
                _ = store  // held until the batch is reported
                inFlight -= 1
                finish(batch, failure: UVOperationError("queue_work", code: UVError.canceled.code))
                submit()
            })
        } catch {
            inFlight -= 1
            finish(batch, failure: error)
        }
    }

    /// Reports each upload of a batch (`failure` for those it has no result for) and keeps the
    /// batch for reuse.
    private func finish(_ batch: SmallBatch, failure: UVOperationError) {
        for job in batch.jobs { job.owner.smallUploadDone(job.result ?? .failure(failure)) }
        batch.jobs.removeAll(keepingCapacity: true)
        if spare.count < maxBatches { spare.append(batch) }
    }

    /// Where small uploads go: the target directory (by path for messages, by descriptor for
    /// the calls) and, where the file system has no `O_TMPFILE`, the named partials.
    struct SmallUploadPlace: @unchecked Sendable {
        let directory: String
        let descriptor: FileDescriptor
        let partialDirectory: String
        let pid: pid_t
    }

    /// The blocking body of `enqueue` for one upload (threadpool only).
    private static func storeNow(_ job: SmallJob, _ place: SmallUploadPlace, sync: Bool, unnamed: Bool, names: inout SeedUploadName.Formatter) -> Result<SeedUploadName, UVOperationError> {
        var fd: FileDescriptor
        var path: String?  // the named partial, if one is used
        do throws(UVOperationError) {
            guard unnamed else { throw UVOperationError("openat(O_TMPFILE)", target: place.directory, code: UVError.operationNotSupported.code) }
            fd = try BlockingFileSystem.openTemporary(in: ".", relativeTo: place.descriptor)
        } catch where [UVError.operationNotSupported, .isDirectory, .invalidArgument].contains(error.error) {
            let named = Store.seedPartialPath(place.partialDirectory, pid: place.pid, number: job.partialNumber)
            do throws(UVOperationError) {
                fd = try Store.createLockedNow(named)
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
            if let path { try? BlockingFileSystem.unlink(path) }
            try? BlockingFileSystem.close(fd)
            return .failure(writeError)
        }
        if let path {
            let r = Store.commitNow(fd, partialPath: path, metaPath: nil, name: job.name.description, directory: place.directory, sync: sync, syncDirectory: false)
            if case .failure = r { try? BlockingFileSystem.unlink(path) }
            return r.map { SeedUploadName(utcSeconds: job.name.utcSeconds, counter: job.name.counter, attempt: $0) }
        }
        return Store.linkTemporaryNow(fd, name: job.name, directory: place.directory, relativeTo: place.descriptor, sync: sync, names: &names)  // the batch fsyncs the directory
    }
}
