import DataStreamCore
import Glibc
import Logging
import UV

/// Drives one native reliable-UDP session: opens (or resumes) the partial through the store,
/// copies accepted chunks into its ring, writes the contiguous runs the machine hands out (hashing
/// them in file order as they go), verifies, commits, and answers with STATUS datagrams.
/// Owned by the `UDPReceiver` from START until it ends (idle timeout, abort, or the linger
/// after its final status). The ring is released as soon as the session is finished.
final class NativeSessionDriver {
    /// Strong: a file operation's callback may run after the receiver dropped this session.
    let receiver: UDPReceiver
    let id: UInt64
    let source: SocketAddress
    let clientNonce: UInt64
    let file: FileHeader
    let chunkSize: Int
    let windowChunks: UInt32
    var isDirty = false
    /// Counted against the receiver's session caps (until finished or ended).
    var holdsSlot = true
    /// Set when the disk had no room for this upload (nothing reserved for it): only an upload
    /// stored before may go on (answered from its receipt); anything else is refused with this.
    let newUploadRefusal: ProtocolError?
    private var machine: ReliableUDPReceiver?
    private var partial: Store.NativePartial?
    /// Set instead of `partial` when the upload was stored before (its receipt): nothing is
    /// received, and a FINISH with the receipt's digest is answered with its name.
    private var storedReceipt: UploadReceipt?
    private var ring: UnsafeMutableRawBufferPointer?
    private var acceptDatagram: [UInt8]?
    private var finishMessage: UDPWire.Finish?
    private var writeInFlight = false
    /// The partial holds its bytes up to here (what was there at open, and every write since).
    private var writtenEnd: UInt64 = 0
    private var closeRequested: Bool?
    /// Idle and linger timeouts: decided by the clock.
    private var clock: UDPSessionClock
    private var ended = false
    private var opening = false
    private var committing = false
    private var retired = false

    /// When the session began (monotonic nanoseconds), for events.
    private let createdAt = monotonicNanoseconds()

    init(receiver: UDPReceiver, id: UInt64, source: SocketAddress, clientNonce: UInt64, file: FileHeader, chunkSize: Int, windowChunks: UInt32, newUploadRefusal: ProtocolError? = nil) {
        self.newUploadRefusal = newUploadRefusal
        self.receiver = receiver
        self.id = id
        self.source = source
        self.clientNonce = clientNonce
        self.file = file
        self.chunkSize = chunkSize
        self.windowChunks = windowChunks
        clock = UDPSessionClock(idleTimeout: receiver.limits.idleTimeout, linger: receiver.limits.linger, now: UDPReceiver.microseconds())
    }

    private var server: Server { receiver.server }
    private var ringBytes: Int { Int(windowChunks) * chunkSize }

    func open() {
        opening = true
        server.store.openNative(file, owner: source.hostIdentityBytes, refusingNewWith: newUploadRefusal) { [self] result in
            opening = false
            guard !ended else {
                if case .success(let found) = result {
                    // Unlocked before the id is free again.
                    let store = server.store, id = file.uploadID
                    if case .partial(let p) = found { store.close(p.fd, p.path) { store.release(id) } } else { store.release(id) }
                }
                retireIfDone()
                return
            }
            switch result {
            case .failure(let error):
                server.statistics.udpSessionsRefused += 1
                server.logger.warning("udp upload refused: \(error)", metadata: ["upload": "\(file.uploadID)", "source": "\(source)"])
                receiver.send(UDPWire.encodeAbort(code: error.code, message: error.description, session: id, packet: receiver.nextPacket()), to: source)
                end()
            case .success(let found):
                let held: UInt64
                switch found {
                case .partial(let p):
                    partial = p
                    held = p.held
                    writtenEnd = p.held
                case .stored(let receipt):
                    storedReceipt = receipt
                    held = file.size
                }
                let now = UDPReceiver.microseconds()
                machine = ReliableUDPReceiver(.init(chunkSize: chunkSize, totalBytes: file.size - held, windowChunks: windowChunks), now: now)
                clock.opened()
                if storedReceipt == nil {
                    ring = .allocate(byteCount: ringBytes, alignment: 4096)
                } else {
                    receiver.ringReleased(ringBytes)  // nothing will be received: no ring, its budget back now
                }
                let accept = UDPWire.encode(UDPWire.Accept(clientNonce: clientNonce, baseOffset: held, windowChunks: windowChunks), session: id, packet: receiver.nextPacket())
                acceptDatagram = accept
                receiver.send(accept, to: source)
                machine!.sent(bytes: accept.count)
                if storedReceipt == nil {
                    server.tally(.started, .udp)
                    server.emit(.started(.native(file, transport: .udp, peer: source.description)))
                }
                server.logger.debug("udp upload opened", metadata: ["upload": "\(file.uploadID)", "name": "\(file.name)", "size": "\(file.size)", "held": "\(held)", "chunk": "\(chunkSize)"])
            }
        }
    }

    /// A repeated START (the ACCEPT was lost): send the ACCEPT again.
    func repeatAccept() {
        guard let acceptDatagram, machine != nil else { return }
        receiver.send(acceptDatagram, to: source)
        machine!.sent(bytes: acceptDatagram.count)
    }

    func data(_ header: UDPWire.Header, _ d: UnsafeRawBufferPointer) {
        guard machine != nil, let ring, let chunk = UDPWire.chunkIndex(d) else { return }
        let payload = UnsafeRawBufferPointer(rebasing: d[UDPWire.dataHeaderLength...])
        switch machine!.data(chunk: chunk, length: payload.count, packet: header.packet, now: UDPReceiver.microseconds()) {
        case .store(let slot):
            UnsafeMutableRawBufferPointer(rebasing: ring[(slot * chunkSize)...]).copyMemory(from: payload)
            server.statistics.bytesReceived += UInt64(payload.count)
            server.metrics.received(payload.count, .udp)
        case .duplicate:
            server.statistics.udpDuplicates += 1
        case .outOfRange, .badLength, .closed:
            server.statistics.udpDatagramsIgnored += 1
        }
    }

    func finish(_ d: UnsafeRawBufferPointer) {
        guard machine != nil, let f = UDPWire.decodeFinish(d) else { return }
        if f.algorithm != file.digest {
            perform(machine!.writeFailed("FINISH digest is \(f.algorithm.name), START announced \(file.digest.name)"))
            return
        }
        if finishMessage == nil { finishMessage = f }
        perform(machine!.finish(f, now: UDPReceiver.microseconds()))
    }

    func abort(_ d: UnsafeRawBufferPointer) {
        let reason = UDPWire.decodeAbort(d)?.message ?? "?"
        server.logger.info("udp upload abandoned by the sender: \(reason)", metadata: ["upload": "\(file.uploadID)"])
        close(keepPartial: true)
    }

    func poll(now: UInt64) {
        isDirty = false
        guard machine != nil else { return }
        perform(machine!.poll(now: now))
    }

    func tick(now: UInt64) {
        guard !ended else { return }
        switch clock.tick(now: now, lastActivity: machine?.lastActivity ?? 0) {
        case .none:
            break
        case .endLinger:
            end()
        case .closeIdle:
            if let m = machine {
                server.logger.warning("udp upload idle for \(receiver.limits.idleTimeout) s; its partial stays resumable", metadata: ["upload": "\(file.uploadID)", "received": "\(m.cumulative) of \(m.chunkCount) chunks"])
            }
            close(keepPartial: true)
        case .poll:
            perform(machine!.poll(now: now))
        }
    }

    private func perform(_ actions: ReliableUDPReceiver.Actions) {
        guard machine != nil else { return }
        if let w = actions.write { write(w) }
        if actions.verify { verify() }
        if actions.sendStatus { sendStatus() }
        if machine!.isFinished, !clock.hasFinished { finished() }
    }

    private func write(_ w: ReliableUDPReceiver.Write) {
        guard let ring, let partial else { return }
        let start = Int(w.firstChunk % windowChunks) * chunkSize
        precondition(w.byteCount <= ring.count && w.endChunk > w.firstChunk && w.endChunk - w.firstChunk <= windowChunks,
                     "udp write run \(w) does not fit the ring of \(windowChunks) x \(chunkSize) bytes")
        let first = min(w.byteCount, ring.count - start)
        let a = UnsafeRawBufferPointer(rebasing: ring[start..<(start + first)])
        let b = UnsafeRawBufferPointer(rebasing: ring[0..<(w.byteCount - first)])
        // The digest grows with the contiguous prefix, so verifying at the end costs nothing.
        partial.digester.update(a)
        partial.digester.update(b)
        writeInFlight = true
        issueWrite(partial, a, b, offset: partial.held + w.fileOffset)
    }

    private func issueWrite(_ partial: Store.NativePartial, _ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, offset: UInt64) {
        let buffers = b.count > 0 ? [a, b] : [a]
        let total = a.count + b.count
        let failed: (String) -> Void = { [self] reason in
            writeInFlight = false
            if let keep = closeRequested { close(keepPartial: keep); return }
            guard !ended else { retireIfDone(); return }
            server.logger.error("udp upload write failed: \(reason)", metadata: ["upload": "\(file.uploadID)"])
            perform(machine!.writeFailed(ProtocolError.storageFailed(reason: reason).description))
        }
        do throws(UVOperationError) {
            try server.store.fs.write(partial.fd, buffers: buffers, offset: Int64(offset), target: partial.path) { [self] r in
                switch r {
                case .failure(let e):
                    failed(e.error == .noSpace ? "disk full (\(e))" : e.description)
                case .success(let n) where n < total:
                    writtenEnd = max(writtenEnd, offset + UInt64(n))
                    // A short write: write the rest.
                    let restA = n < a.count ? UnsafeRawBufferPointer(rebasing: a[n...]) : UnsafeRawBufferPointer(rebasing: b[(n - a.count)...])
                    let restB = n < a.count ? b : UnsafeRawBufferPointer(start: nil, count: 0)
                    issueWrite(partial, restA, restB, offset: offset + UInt64(n))
                case .success(let n):
                    writeInFlight = false
                    writtenEnd = max(writtenEnd, offset + UInt64(n))
                    if let keep = closeRequested { close(keepPartial: keep); return }
                    guard !ended else { retireIfDone(); return }
                    perform(machine!.writeCompleted(now: UDPReceiver.microseconds()))
                }
            }
        } catch {
            failed(error.description)
        }
    }

    private func verify() {
        if let receipt = storedReceipt, let f = finishMessage {
            verifyStored(receipt, f)
            return
        }
        guard let partial, let f = finishMessage else { return }
        let digest = partial.digester.finish()
        let matches = digest == f.digest
        perform(machine!.verified(matches, detail: "digest mismatch: computed \(digest.hexString), sender announced \(f.digest.hexString)"))
        guard matches else { return }
        let store = server.store
        self.partial = nil
        committing = true
        store.commit(partial.fd, partialPath: partial.path, metaPath: partial.metaPath, name: file.name, receipt: (file, digest)) { [self] r in
            committing = false
            store.release(file.uploadID)
            defer { retireIfDone() }
            switch r {
            case .success(let stored):
                server.statistics.uploadsStored += 1
                server.logger.info("stored udp upload", metadata: ["upload": "\(file.uploadID)", "name": "\(stored)", "bytes": "\(file.size)", "source": "\(source)"])
                server.tally(.stored, .udp)
                server.emit(server.nativeStored(file, transport: .udp, peer: source.description, storedName: stored, digest: digest, startedAt: createdAt))
                perform(machine!.committed(.success(stored)))
            case .failure(let e):
                server.logger.error("cannot store udp upload: \(e)", metadata: ["upload": "\(file.uploadID)"])
                store.discard(nil, path: partial.path, metaPath: partial.metaPath)
                perform(machine!.committed(.failure(.storage(e))))
            }
        }
    }

    /// FINISH for an upload stored before: its digest must be the receipt's; then the answer is
    /// the stored name, and nothing is stored again. A mismatch drops the receipt (the stored
    /// file stays): the next try is a new upload.
    private func verifyStored(_ receipt: UploadReceipt, _ f: UDPWire.Finish) {
        let matches = receipt.digest == f.digest
        storedReceipt = nil
        server.store.release(file.uploadID)
        if matches {
            server.statistics.uploadsAlreadyStored += 1
            server.logger.info("udp upload already stored", metadata: ["upload": "\(file.uploadID)", "name": "\(receipt.storedName)", "source": "\(source)"])
        }
        // A mismatch leaves the stored file and its receipt as they are (see Connection).
        perform(machine!.verified(matches, detail: "digest mismatch with the upload stored under this id"))
        if matches { perform(machine!.committed(.success(receipt.storedName))) }
    }

    private func sendStatus() {
        let now = UDPReceiver.microseconds()
        let status = machine!.makeStatus(now: now)
        let bytes = UDPWire.encode(status, session: id, packet: receiver.nextPacket())
        if receiver.send(bytes, to: source) { machine!.sent(bytes: bytes.count) }
    }

    /// The machine reached stored or failed: free the ring, drop a failed partial, linger.
    private func finished() {
        clock.finished(now: UDPReceiver.microseconds())
        releaseRing()
        receiver.releaseSlot(self)
        guard machine!.phase == .failed else { return }
        server.statistics.uploadsFailed += 1
        server.logger.warning("udp upload failed: \(machine!.finalMessage ?? "?")", metadata: ["upload": "\(file.uploadID)", "source": "\(source)"])
        // Every chunk came and FINISH was read: it failed on its digest.
        let mismatch = finishMessage != nil && machine!.cumulative == machine!.chunkCount
        server.tally(.failed(code: (mismatch ? ProtocolError.resumeMismatch(detail: "") : .connectionFailed(reason: "")).code), .udp)
        server.emit(.failed(.native(file, transport: .udp, peer: source.description), reason: machine!.finalMessage ?? "failed",
                            code: (mismatch ? ProtocolError.resumeMismatch(detail: "") : .connectionFailed(reason: "")).code, resumable: partial.map { !mismatch || MismatchedPartial.decide(heldAtOpen: $0.held, heldNow: writtenEnd).keepsPartial } ?? false))
        if let partial, !writeInFlight {
            self.partial = nil
            // A digest mismatch means the bytes this session added are wrong: they go (see
            // `MismatchedPartial`). Other failures (a write error) leave a correct prefix that a
            // later try resumes.
            if mismatch {
                let store = server.store, id = file.uploadID
                store.mismatched(id, fd: partial.fd, path: partial.path, metaPath: partial.metaPath, heldAtOpen: partial.held, heldNow: writtenEnd) { store.release(id) }
            } else {
                let store = server.store, id = file.uploadID
                store.letGo(id, fd: partial.fd, path: partial.path, metaPath: partial.metaPath, bytes: writtenEnd) { store.release(id) }
            }
        }
    }

    private func releaseRing() {
        guard let r = ring, !writeInFlight else { return }
        ring = nil
        r.deallocate()
        receiver.ringReleased(ringBytes)
    }

    /// Ends the session now (idle, abort, stop). The partial stays resumable when `keepPartial`.
    func close(keepPartial: Bool) {
        guard !ended else { return }
        if writeInFlight {
            closeRequested = keepPartial
            return
        }
        if let partial {
            self.partial = nil
            if keepPartial {
                let store = server.store, id = file.uploadID
                store.letGo(id, fd: partial.fd, path: partial.path, metaPath: partial.metaPath, bytes: writtenEnd) { store.release(id) }
            } else {
                server.store.discard(partial.fd, path: partial.path, metaPath: partial.metaPath)
                server.store.release(file.uploadID)
            }
        } else if storedReceipt != nil {
            storedReceipt = nil
            server.store.release(file.uploadID)
        }
        end()
    }

    private func end() {
        guard !ended else { return }
        ended = true
        releaseRing()
        if ring == nil && machine == nil {
            // Never opened: the budget was reserved at START.
            receiver.ringReleased(ringBytes)
        }
        receiver.nativeSessionEnded(self)
        retireIfDone()
    }

    /// Tells the receiver once that this session ended and no callback of it is pending.
    private func retireIfDone() {
        guard ended, !retired, !opening, !writeInFlight, !committing else { return }
        retired = true
        receiver.sessionRetired()
    }
}
