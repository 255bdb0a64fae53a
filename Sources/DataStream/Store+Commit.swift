import DataStreamCore
import Glibc
import UV

/// Putting files into place: link under a free name (never replacing a file), receipts, fsync.
extension Store {
    /// The blocking end of `storeSmall` and `commitSeed` for a file without a name (threadpool
    /// only): fsync (if enabled), link under the first free candidate name, close. Names are
    /// looked up from `base` (the directory's descriptor) if given, else under `directory`.
    /// Each candidate is formatted on the stack as the C string the call takes.
    static func linkTemporaryNow(_ fd: FileDescriptor, name: SeedUploadName, directory: String, relativeTo base: FileDescriptor? = nil, sync: Bool, names: inout SeedUploadName.Formatter) -> Result<SeedUploadName, UVOperationError> {
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

    /// Stores a complete upload held in a seed-style partial (a file without a name, or a named
    /// partial where the file system has none) under the client's `name`, or the first free
    /// candidate after it (`NamePolicy.candidate`): never replacing a file. One work item.
    /// Completes with the stored name.
    func commit(_ partial: SeedPartial, underClientName name: String, completion: @escaping (Result<String, UVOperationError>) -> Void) {
        if let path = partial.path {
            commit(partial.fd, partialPath: path, metaPath: nil, name: name, completion: completion)
            return
        }
        let directory = directory, sync = fsyncEnabled, fd = partial.fd
        do throws(UVOperationError) {
            try runBlocking({ Store.linkTemporaryNow(fd, clientName: name, directory: directory, sync: sync) }, completion: completion)
        } catch {
            closeQuietly(fd, partial.label)
            completion(.failure(error))
        }
    }

    /// The blocking body of `commit(_:underClientName:)` (threadpool only): fsync (if enabled),
    /// link under the first free candidate, close, fsync the directory (if enabled).
    static func linkTemporaryNow(_ fd: FileDescriptor, clientName name: String, directory: String, sync: Bool) -> Result<String, UVOperationError> {
        defer { try? BlockingFileSystem.close(fd) }
        do throws(UVOperationError) {
            if sync { try BlockingFileSystem.fsync(fd, target: directory + "/" + name) }
            let attempt = try linkUnderFreeName(name, in: directory) { path throws(UVOperationError) in try BlockingFileSystem.linkTemporary(fd, to: path) }
            if sync { try BlockingFileSystem.syncDirectory(directory) }
            return .success(NamePolicy.candidate(name, attempt: attempt))
        } catch {
            return .failure(error)
        }
    }

    /// Puts a file under `name` in `directory`, or under the first free candidate after it
    /// (`NamePolicy.candidate`, up to `NamePolicy.lastAttempt`), never replacing a file: `link`
    /// makes the name given as a path and fails with EEXIST if it is taken. Returns the attempt
    /// that succeeded. Blocking: threadpool only.
    static func linkUnderFreeName(_ name: String, in directory: String, _ link: (String) throws(UVOperationError) -> Void) throws(UVOperationError) -> Int {
        var attempt = 0
        while true {
            do throws(UVOperationError) {
                try link(directory + "/" + NamePolicy.candidate(name, attempt: attempt))
                return attempt
            } catch where error.error == .fileExists && attempt < NamePolicy.lastAttempt {
                attempt += 1
            }
        }
    }

    /// Calls `body` with `name` as a C string on the stack: `directory/name` if a directory is
    /// given, else the name alone.
    static func withPath<R>(of name: SeedUploadName, under directory: String?, names: inout SeedUploadName.Formatter, _ body: (UnsafePointer<CChar>) -> R) -> R {
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
    /// The descriptor closes last, after the link, the receipt and the partial's removal: its
    /// lock keeps every other process off the partial until then, and one that claims the name
    /// afterwards finds the receipt, or no partial.
    static func commitNow(_ fd: FileDescriptor, partialPath: String, metaPath: String?, name: String, directory: String, sync: Bool, syncDirectory: Bool = true, receipt: (header: FileHeader, digest: [UInt8], path: String)? = nil) -> Result<Int, UVOperationError> {
        defer { try? BlockingFileSystem.close(fd, target: partialPath) }
        do throws(UVOperationError) {
            if sync { try BlockingFileSystem.fsync(fd, target: partialPath) }
            let attempt = try linkUnderFreeName(name, in: directory) { path throws(UVOperationError) in try BlockingFileSystem.link(partialPath, to: path) }
            let stored = NamePolicy.candidate(name, attempt: attempt)
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

    /// Deletes a partial (and its metadata), then closes its descriptor if given: removed while
    /// still locked, so no other process claims it half removed.
    func discard(_ fd: FileDescriptor?, path: String, metaPath: String?) {
        if metaPath != nil, let id = nativeID(ofPartial: path) { partials.remove(id) }
        let paths = [path] + (metaPath.map { [$0] } ?? [])
        unlinkInTurn(paths) { [self] in if let fd { closeQuietly(fd, path) } }
    }

    /// A native upload failed verification: its partial is cut back or deleted, as
    /// `MismatchedPartial` decides. Takes `fd` (closed here).
    /// `then` runs once the partial is cut back (the caller frees the upload id there).
    func mismatched(_ id: UploadID, fd: FileDescriptor?, path: String, metaPath: String, heldAtOpen: UInt64, heldNow: UInt64, then: @escaping () -> Void) {
        switch MismatchedPartial.decide(heldAtOpen: heldAtOpen, heldNow: heldNow) {
        case .discard:
            discard(fd, path: path, metaPath: metaPath)
            then()
        case .rollBack(let length):
            partials.held(id, bytes: length)
            guard let fd else { discard(nil, path: path, metaPath: metaPath); then(); return }
            do {
                try fs.truncate(fd, to: Int64(length), target: path) { [self] error in
                    // A partial that cannot be cut back cannot be trusted either.
                    if error != nil { discard(fd, path: path, metaPath: metaPath) } else { closeQuietly(fd, path) }
                    then()
                }
            } catch {
                discard(fd, path: path, metaPath: metaPath)
                then()
            }
        }
    }

    /// A native upload's connection or session let its partial go holding `bytes`: an empty
    /// one is removed (there is nothing to resume, and a client that only announces uploads
    /// must not leave files behind); others stay, counted against their owner. `fd` (the
    /// partial's descriptor, if still open) closes after that, so an empty partial is removed
    /// while still locked.
    /// `then` runs once that is done (the caller frees the upload id there, so a client that
    /// comes straight back finds the partial either kept or gone, never half removed).
    func letGo(_ id: UploadID, fd: FileDescriptor?, path: String, metaPath: String, bytes: UInt64, then: @escaping () -> Void) {
        guard bytes == 0 else {
            partials.held(id, bytes: bytes)
            close(fd, path, then: then)
            return
        }
        partials.remove(id)
        unlinkInTurn([path, metaPath]) { [self] in close(fd, path, then: then) }
    }

    /// Removes `paths` one after another (missing ones are no error), then calls `then`.
    private func unlinkInTurn(_ paths: [String], then: @escaping () -> Void) {
        guard let first = paths.first else { then(); return }
        let rest = Array(paths.dropFirst())
        do {
            try fs.unlink(first) { [self] _ in unlinkInTurn(rest, then: then) }
        } catch {
            unlinkInTurn(rest, then: then)
        }
    }

    /// The upload id of a native partial's path (`ID.part`).
    private func nativeID(ofPartial path: String) -> UploadID? {
        guard path.hasSuffix(".part"), let slash = path.lastIndex(of: "/") else { return nil }
        return UploadID(hex: String(path[path.index(after: slash)...].dropLast(5)))
    }
}
