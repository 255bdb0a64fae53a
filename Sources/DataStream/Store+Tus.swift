import DataStreamCore
import Glibc
import UV

/// tus uploads (`/files/ID`): native partials (`ID.part` with `ID.meta`) created empty by a
/// POST, appended to by PATCH requests, stored under their name once the last byte is in.
/// tus carries no digest: nothing is verified, and no receipt is written.
extension Store {
    /// Why a tus upload cannot be opened.
    enum TusRefusal: Error {
        case notFound
        case busy
        /// The client's offset is not what the server holds.
        case offsetMismatch(held: UInt64)
        case failed(ProtocolError)
    }

    /// A tus upload as the server holds it.
    struct TusUpload {
        let header: FileHeader
        /// Bytes on disk now.
        let held: UInt64
    }

    /// A tus upload's partial, opened for appending at `held`. The upload id is busy until `release`.
    struct TusPartial {
        let upload: TusUpload
        let fd: FileDescriptor
        let path: String
        let metaPath: String
    }

    /// Creates an empty upload of `length` bytes to be stored as `name`, within the partial
    /// caps of `owner`. Completes with its id.
    func createTus(name: String, length: UInt64, owner: [UInt8], completion: @escaping (Result<UploadID, ProtocolError>) -> Void) {
        if case .refuse(let reason) = partials.admit(owner: owner) {
            completion(.failure(.serverBusy(reason: reason)))
            return
        }
        let header = FileHeader(uploadID: .random(), size: length, digest: .xxh3_128, name: name)
        createNative(header, owner: owner) { [self] r in
            switch r {
            case .success(.partial(let p)):
                // Let go (unlocked) before the id is handed out, so its first PATCH finds it free.
                close(p.fd, p.path) { completion(.success(header.uploadID)) }
            case .success(.stored):
                completion(.failure(.storageFailed(reason: "a fresh id was taken")))
            case .failure(let e):
                completion(.failure(e))
            }
        }
    }

    /// The upload `id`'s length, name and bytes held (one work item); nil if there is none.
    func lookUpTus(_ id: UploadID, completion: @escaping (Result<TusUpload?, ProtocolError>) -> Void) {
        let part = partialPath(id), meta = metaPath(id)
        do throws(UVOperationError) {
            try runBlocking({ () -> Result<TusUpload?, ProtocolError> in
                do throws(UVOperationError) {
                    guard let bytes = try Store.readSmallNow(meta), let recorded = PartialMetadata(decoding: bytes) else { return .success(nil) }
                    let held = try BlockingFileSystem.status(atPath: part).size
                    return .success(TusUpload(header: recorded.header, held: held))
                } catch where error.error == .noSuchFile {
                    return .success(nil)
                } catch {
                    return .failure(.storage(error))
                }
            }, completion: { completion($0 ?? .failure(.storageFailed(reason: "the lookup did not run"))) })
        } catch {
            completion(.failure(.storage(error)))
        }
    }

    /// Opens the upload `id` for appending at `offset`, which must be what the server holds.
    func openTus(_ id: UploadID, offset: UInt64, completion: @escaping (Result<TusPartial, TusRefusal>) -> Void) {
        guard !activeUploads.contains(id) else { completion(.failure(.busy)); return }
        activeUploads.insert(id)
        let done: (Result<TusPartial, TusRefusal>) -> Void = { [self] r in
            if case .failure = r { activeUploads.remove(id) }
            completion(r)
        }
        let part = partialPath(id), meta = metaPath(id)
        do throws(UVOperationError) {
            try runBlocking({ () -> Result<TusPartial, TusRefusal> in
                do throws(UVOperationError) {
                    guard let bytes = try Store.readSmallNow(meta), let recorded = PartialMetadata(decoding: bytes) else { return .failure(.notFound) }
                    let fd: FileDescriptor
                    switch try Store.claimPartialNow(part) {
                    case .claimed(let claimed): fd = claimed
                    case .busy: return .failure(.busy)
                    case .missing, .changed: return .failure(.notFound)  // stored or ended meanwhile
                    }
                    let held: UInt64
                    do throws(UVOperationError) { held = try BlockingFileSystem.status(of: fd, target: part).size } catch {
                        try? BlockingFileSystem.close(fd)
                        throw error
                    }
                    guard held == offset else {
                        try? BlockingFileSystem.close(fd)
                        return .failure(.offsetMismatch(held: held))
                    }
                    return .success(TusPartial(upload: TusUpload(header: recorded.header, held: held), fd: fd, path: part, metaPath: meta))
                } catch where error.error == .noSuchFile {
                    return .failure(.notFound)
                } catch {
                    return .failure(.failed(.storage(error)))
                }
            }, completion: { done($0 ?? .failure(.failed(.storageFailed(reason: "the open did not run")))) })
        } catch {
            done(.failure(.failed(.storage(error))))
        }
    }

    /// A PATCH ended with the upload unfinished: its partial (closed) holds `bytes`, and the id is free.
    func keepTus(_ id: UploadID, bytes: UInt64) {
        partials.held(id, bytes: bytes)
        release(id)
    }

    /// The upload is stored: it no longer counts as a partial, and the id is free.
    func tusStored(_ id: UploadID) {
        partials.remove(id)
        release(id)
    }

    /// Abandons the upload `id`: its partial and metadata go. False if it is in use or absent.
    func terminateTus(_ id: UploadID, completion: @escaping (Result<Void, TusRefusal>) -> Void) {
        guard !activeUploads.contains(id) else { completion(.failure(.busy)); return }
        lookUpTus(id) { [self] r in
            switch r {
            case .success(nil): completion(.failure(.notFound))
            case .failure(let e): completion(.failure(.failed(e)))
            case .success(.some):
                guard !activeUploads.contains(id) else { completion(.failure(.busy)); return }
                // Gone before the answer: the metadata last, so a crash between leaves no
                // partial that looks resumable.
                activeUploads.insert(id)
                let part = partialPath(id), meta = metaPath(id)
                do throws(UVOperationError) {
                    // Claimed first, so an upload another process is writing is not removed.
                    try runBlocking({ () -> Result<Void, TusRefusal> in
                        do throws(UVOperationError) {
                            let claim = try Store.claimPartialNow(part)
                            switch claim {
                            case .busy, .changed: return .failure(.busy)
                            case .claimed(let fd):
                                // Removed while held, then let go.
                                defer { try? BlockingFileSystem.close(fd, target: part) }
                                try? BlockingFileSystem.unlink(part)
                            case .missing: break
                            }
                            try BlockingFileSystem.unlink(meta)
                            return .success(())
                        } catch where error.error == .noSuchFile {
                            return .failure(.notFound)
                        } catch { return .failure(.failed(.storage(error))) }
                    }, completion: { [self] (r: Result<Void, TusRefusal>?) in
                        activeUploads.remove(id)
                        if case .success? = r { partials.remove(id) }
                        completion(r ?? .failure(.failed(.storageFailed(reason: "the removal did not run"))))
                    })
                } catch {
                    activeUploads.remove(id)
                    completion(.failure(.failed(.storage(error))))
                }
            }
        }
    }
}
