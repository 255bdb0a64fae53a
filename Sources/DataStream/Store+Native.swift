import DataStreamCore
import Glibc
import UV

/// Native uploads: open or resume a partial with its metadata, receipts of stored uploads, and
/// the uploads in progress (one connection or session each).
extension Store {

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
    /// marked busy here until `release(_:)`, and its partial is locked (`claimPartialNow`)
    /// for as long as its descriptor is open, so no other process writes it meanwhile either.
    func openNative(_ header: FileHeader, owner: [UInt8], refusingNewWith refusal: ProtocolError? = nil, completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        guard !activeUploads.contains(header.uploadID) else {
            completion(.failure(.uploadBusy))
            return
        }
        activeUploads.insert(header.uploadID)
        lookUpNative(header, owner: owner, refusal: refusal, attempt: 0) { [self] r in
            if case .failure = r { activeUploads.remove(header.uploadID) }
            completion(r)
        }
    }

    /// How many times an open looks an upload up again when it changed between the look-up
    /// and the claim (another process stored it or removed its partial meanwhile).
    static let lookUpAttempts = 3

    /// One look-up of an upload: its receipt and its partial's metadata, then what they say.
    private func lookUpNative(_ header: FileHeader, owner: [UInt8], refusal: ProtocolError?, attempt: Int, _ done: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        guard attempt < Store.lookUpAttempts else {
            done(.failure(.storageFailed(reason: "the upload changed while it was being opened (another server stored or removed it); try again")))
            return
        }
        let again = { [self] in lookUpNative(header, owner: owner, refusal: refusal, attempt: attempt + 1, done) }
        // Not stored before: given the partial's metadata as read (nil if there is none).
        let ifNotStored: (_ meta: [UInt8]?) -> Void = { [self] meta in
            if let refusal { done(.failure(refusal)) } else { openPartial(header, owner: owner, meta: meta, again: again, done) }
        }
        let receiptPath = receiptPath(header.uploadID), metaPath = metaPath(header.uploadID)
        let lookedUp: (Result<(receipt: [UInt8]?, meta: [UInt8]?), UVOperationError>?) -> Void = { [self] r in
            switch r {
            case nil:
                done(.failure(.storage(UVOperationError("queue_work", code: UVError.canceled.code))))
            case .failure(let e)?:
                done(.failure(.storage(e)))
            case .success(let found)?:
                guard let bytes = found.receipt else { ifNotStored(found.meta); return }
                guard let receipt = UploadReceipt(decoding: bytes) else {
                    unlinkQuietly(receiptPath)
                    ifNotStored(found.meta)
                    return
                }
                guard receipt.header == header else {
                    // Another file under a stored upload's id: refused, and the receipt stays,
                    // so whoever knows an id cannot make its owner's resend a second copy.
                    done(.failure(.resumeMismatch(detail: "this upload id belongs to another file, already stored")))
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
                        ifNotStored(found.meta)
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
    static func readSmallNow(_ path: String) throws(UVOperationError) -> [UInt8]? {
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
    func storedFileMatches(_ receipt: UploadReceipt, completion: @escaping (Bool) -> Void) {
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

    /// Resumes the partial its metadata (`meta`, as read) describes, if it matches `header`;
    /// creates one if there is no metadata. `again` looks the upload up anew (it changed).
    func openPartial(_ header: FileHeader, owner: [UInt8], meta bytes: [UInt8]?, again: @escaping () -> Void, _ done: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        guard let bytes else {
            if case .refuse(let reason) = partials.admit(owner: owner) {
                done(.failure(.serverBusy(reason: reason)))
                return
            }
            createNative(header, owner: owner, again: again, done)
            return
        }
        guard let recorded = PartialMetadata(decoding: bytes) else {
            done(.failure(.storageFailed(reason: "the metadata of this upload is unreadable")))
            return
        }
        let held = recorded.header
        guard held == header else {
            // Nothing of the held upload is told: the id is all the client showed.
            done(.failure(.resumeMismatch(detail: "this upload id is held by another file (its size, digest or name differ)")))
            return
        }
        resumeNative(header, owner: owner, again: again, done)
    }

    /// Marks the upload id free again (its connection is done with it).
    func release(_ id: UploadID) { activeUploads.remove(id) }

    /// What a claim on a native partial found (see `claimPartialNow`).
    enum PartialClaim {
        /// The partial is this descriptor's (locked) until it closes.
        case claimed(FileDescriptor)
        /// A connection here or in another process holds it.
        case busy
        /// There is no partial under that name.
        case missing
        /// The upload moved on between the look-up and the claim (stored, or its partial
        /// removed or replaced): look it up again.
        case changed
    }

    /// Opens an existing partial for writing and locks it (blocking: threadpool only). The
    /// lock is checked against the name afterwards: a partial stored or removed by its holder
    /// between the open and the lock is no longer under that name, and is not claimed.
    static func claimPartialNow(_ part: String) throws(UVOperationError) -> PartialClaim {
        let fd: FileDescriptor
        do throws(UVOperationError) { fd = try BlockingFileSystem.open(part, flags: [.readWrite, .noFollow]) } catch where error.error == .noSuchFile { return .missing }
        return try holdNow(fd, part)
    }

    /// Locks the open partial `fd` and checks that `part` still names it: `.claimed(fd)`, or
    /// (with `fd` closed) `.busy` or `.changed` (blocking: threadpool only).
    private static func holdNow(_ fd: FileDescriptor, _ part: String) throws(UVOperationError) -> PartialClaim {
        do throws(UVOperationError) {
            guard try BlockingFileSystem.lockExclusively(fd, target: part) else {
                try? BlockingFileSystem.close(fd, target: part)
                return .busy
            }
            guard try BlockingFileSystem.names(part, fd) else {
                try? BlockingFileSystem.close(fd, target: part)
                return .changed
            }
            return .claimed(fd)
        } catch {
            try? BlockingFileSystem.close(fd, target: part)
            throw error
        }
    }

    /// Creates (or takes over an unclaimed, unrecorded) partial and locks it, empties it and
    /// records its metadata, in that order (blocking: threadpool only): the metadata, which
    /// makes an upload resumable, only ever describes a partial its writer holds. If the
    /// upload was stored meanwhile (a receipt appeared after the look-up) nothing is created.
    static func createPartialNow(_ part: String, meta: String, record: [UInt8], receiptPath: String, sync: Bool) throws(UVOperationError) -> PartialClaim {
        let claim = try holdNow(BlockingFileSystem.open(part, flags: [.readWrite, .create, .noFollow], mode: 0o600), part)
        guard case .claimed(let fd) = claim else { return claim }
        do throws(UVOperationError) {
            if try readSmallNow(receiptPath) != nil {
                // Held, so no one writes it: a partial beside a receipt is of no use.
                try? BlockingFileSystem.unlink(part)
                try? BlockingFileSystem.close(fd, target: part)
                return .changed
            }
            try BlockingFileSystem.truncate(fd, to: 0, target: part)
            try writeSmallNow(record, to: meta, sync: sync)
            return .claimed(fd)
        } catch {
            // Removed while still held, then let go: nobody can claim it half made.
            try? BlockingFileSystem.unlink(part)
            try? BlockingFileSystem.close(fd, target: part)
            throw error
        }
    }

    /// Creates the partial of a new upload (and its metadata), locked. `again` looks the
    /// upload up anew if it changed meanwhile (nil: a fresh id that cannot have).
    func createNative(_ header: FileHeader, owner: [UInt8], again: (() -> Void)? = nil, _ completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        let meta = metaPath(header.uploadID), part = partialPath(header.uploadID), receipt = receiptPath(header.uploadID)
        let record = PartialMetadata(header, owner: owner).encoded, sync = fsyncEnabled
        // Counted from now, so uploads opened at the same moment cannot pass the cap together.
        partials.add(header.uploadID, owner: owner, bytes: 0)
        claim({ () throws(UVOperationError) in try Store.createPartialNow(part, meta: meta, record: record, receiptPath: receipt, sync: sync) }) { [self] r in
            if case .success(.claimed(let fd)) = r {
                completion(.success(.partial(NativePartial(fd: fd, path: part, metaPath: meta, held: 0, digester: Digester(header.digest)))))
                return
            }
            partials.remove(header.uploadID)
            switch r {
            case .success(.changed) where again != nil: again!()
            case .success(.busy): completion(.failure(.uploadBusy))
            case .success: completion(.failure(.storageFailed(reason: "the new upload's partial was taken")))
            case .failure(let e): completion(.failure(.storage(e)))
            }
        }
    }

    /// Runs a claim on the threadpool; its result comes back on the loop thread.
    private func claim(_ body: @escaping @Sendable () throws(UVOperationError) -> PartialClaim, completion: @escaping (Result<PartialClaim, UVOperationError>) -> Void) {
        do throws(UVOperationError) {
            try runBlocking({ () -> Result<PartialClaim, UVOperationError> in
                do throws(UVOperationError) { return .success(try body()) } catch { return .failure(error) }
            }, completion: { completion($0 ?? .failure(UVOperationError("queue_work", code: UVError.canceled.code))) })
        } catch {
            completion(.failure(error))
        }
    }

    /// Resumes a partial: claims it, then hashes what it holds. A partial that is gone while
    /// its metadata is not (a crash between the two) is created afresh.
    func resumeNative(_ header: FileHeader, owner: [UInt8], again: @escaping () -> Void, _ completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
        let meta = metaPath(header.uploadID), part = partialPath(header.uploadID)
        let storage: (UVOperationError) -> Void = { e in completion(.failure(.storage(e))) }
        claim({ () throws(UVOperationError) in try Store.claimPartialNow(part) }) { [self] r in
            switch r {
            case .failure(let e): storage(e)
            case .success(.busy): completion(.failure(.uploadBusy))
            case .success(.changed): again()
            case .success(.missing): createNative(header, owner: owner, again: again, completion)
            case .success(.claimed(let fd)):
                submit({ (r: Result<Void, UVOperationError>) in if case .failure(let e) = r { self.closeQuietly(fd, part); storage(e) } }) { [fs] () throws(UVOperationError) in
                    try fs.size(of: fd, target: part) { [self] r in
                        switch r {
                        case .failure(let e):
                            closeQuietly(fd, part)
                            storage(e)
                        case .success(let size) where size > header.size:
                            closeQuietly(fd, part)
                            completion(.failure(.resumeMismatch(detail: "the partial holds more bytes than announced")))
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
    func adoptIfStored(_ partial: NativePartial, _ header: FileHeader, _ completion: @escaping (Result<NativeOpening, ProtocolError>) -> Void) {
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
    static func adoptIfStoredNow(_ fd: FileDescriptor, path: String, metaPath: String, _ header: FileHeader, digest: [UInt8], directory: String, receiptPath: String, sync: Bool) -> UploadReceipt? {
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

    /// Writes a receipt in one step (`writeSmallNow`).
    static func writeReceiptNow(_ receipt: UploadReceipt, to path: String, sync: Bool) throws(UVOperationError) {
        try writeSmallNow(receipt.encoded, to: path, sync: sync)
    }

    /// Writes a small file (a receipt, a partial's metadata) in one step: into `path.tmp`, then
    /// renamed over `path`, so a reader in any process finds the old bytes or the new, never
    /// a half-written file. Its writer must be the only one (it holds the upload).
    static func writeSmallNow(_ bytes: [UInt8], to path: String, sync: Bool) throws(UVOperationError) {
        let temporary = path + ".tmp"
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

    func hashPrefix(_ fd: FileDescriptor, _ path: String, length: UInt64, into digester: Digester, completion: @escaping (UVOperationError?) -> Void) {
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
}
