import DataStreamCore
import Glibc
import Logging
import UV

/// The UDP side of the server: one socket on the server's loop receiving in batches (`recvmmsg`),
/// a session per datagram source, and a timer that drives statuses, flushes and timeouts.
///
/// - Seed sessions (keyed by source address) append datagrams in arrival order (`SeedUDPSession`).
/// - Native sessions (keyed by session id, bound to their source address) receive chunks into a
///   ring and write contiguous runs at their offsets (`ReliableUDPReceiver`).
///
/// Owned by the `Server`; everything runs on the loop thread. The receive buffer is one block
/// reused for every batch: datagrams are copied (seed: into an append buffer; native: into the
/// session's ring slot) before the next batch is read.
final class UDPReceiver: UDPSocketReceiver {
    /// The receiver's own clocks (who may start an upload is `UDPAdmission`'s business).
    struct Limits {
        /// Seconds without a datagram before a session is closed (native partials stay resumable).
        var idleTimeout: Double = 30
        /// How long a finished session answers duplicate FINISHes.
        var linger: Double = 30
    }

    unowned let server: Server
    let socket: UDPSocket
    let limits: Limits
    private let logger: Logger
    private let store: Store
    /// Decides who may start an upload, and counts what admitted sessions hold.
    private var admission: UDPAdmission
    private let timer: Timer
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private var seedSessions: [SocketAddress: SeedSessionDriver] = [:]
    private var sessions: [UInt64: NativeSessionDriver] = [:]
    private var byNonce: [NonceKey: UInt64] = [:]
    private var dirty: [NativeSessionDriver] = []
    private var packetNumber: UInt64 = 0
    private var closing = false
    /// Sessions created and not yet retired (ended with no file operation in flight): `stop`
    /// completes only when this is zero, so no callback of a session outlives the server.
    private var liveSessions = 0
    private var stopCompletion: (() -> Void)?
    private var handlesOpen = 0
    /// The receive buffer the kernel granted (as getsockopt reports it).
    private(set) var grantedReceiveBuffer: Int32 = 0
    /// The kernel may hand over several datagrams in one buffer (`UDP_GRO`).
    private(set) var receiveOffload = false

    private struct NonceKey: Hashable {
        var source: SocketAddress
        var nonce: UInt64
    }

    init(server: Server, address: SocketAddress, receiveBufferBytes: Int32, receiveOffload: Bool, limits: Limits,
         admission: UDPAdmission.Limits) throws(UVOperationError) {
        self.server = server
        self.store = server.store
        self.logger = server.logger
        self.limits = limits
        self.admission = UDPAdmission(limits: admission)
        socket = try UDPSocket(loop: server.loop, batchedReceive: true)
        do throws(UVOperationError) {
            try socket.bind(address)
            grantedReceiveBuffer = try socket.requestReceiveBuffer(receiveBufferBytes)
            if receiveOffload { self.receiveOffload = try socket.enableReceiveOffload() }
            timer = try Timer(loop: server.loop)
        } catch {
            socket.close()
            throw error
        }
        // 64 KiB per datagram slot (libuv 1.44's recvmmsg needs that), 32 slots per batch.
        receiveBuffer = .allocate(byteCount: 32 * 65_536, alignment: 64)
    }

    deinit { receiveBuffer.deallocate() }

    func start() throws(UVOperationError) {
        try socket.startReceiving(self)
        try timer.start(timeout: 5, repeat: 5) { [unowned self] in tick() }
    }

    func localAddress() throws(UVOperationError) -> SocketAddress { try socket.localAddress() }

    var sessionCount: Int { sessions.count + seedSessions.count }
    /// Uploads not yet ended (native sessions holding a slot, seed sources); finished native
    /// sessions that linger to answer duplicates do not count.
    var uploadsInProgress: Int { admission.nativeUploadsInProgress + seedSessions.count }
    var nativeUploadsInProgress: Int { admission.nativeUploadsInProgress }
    var seedUploadsInProgress: Int { seedSessions.count }

    /// Closes the socket and timer; seed sessions end incomplete, native ones keep their partials.
    /// `completion` runs once the socket and timer are closed and every session has retired
    /// (its last file operation answered).
    func stop(_ completion: @escaping () -> Void) {
        closing = true
        stopCompletion = completion
        handlesOpen = 2
        for s in Array(seedSessions.values) { s.shutdown() }
        for s in Array(sessions.values) { s.close(keepPartial: true) }
        timer.close { [self] in handlesOpen -= 1; finishStopIfDone() }
        socket.close { [self] in handlesOpen -= 1; finishStopIfDone() }
    }

    /// A session ended and has nothing in flight: nothing of it will call back any more.
    func sessionRetired() {
        liveSessions -= 1
        finishStopIfDone()
    }

    private func finishStopIfDone() {
        guard handlesOpen == 0, liveSessions == 0, let completion = stopCompletion else { return }
        stopCompletion = nil
        completion()
    }

    // MARK: - Receiving

    func receiveBuffer(for socket: UDPSocket, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? { receiveBuffer }

    func socket(_ socket: UDPSocket, didReceive count: Int, in datagram: UnsafeMutableRawBufferPointer?, from sender: SocketAddress?, isMoreOfBatch: Bool, error: UVError?) {
        if let error {
            logger.warning("udp receive failed: \(error)")
            return
        }
        guard let sender, let datagram else {
            // The end of a batch: run what the batch made due.
            endOfBatch()
            return
        }
        let d = UnsafeRawBufferPointer(rebasing: datagram[0..<count])
        if !seedSessions.isEmpty, let seed = seedSessions[sender] {
            server.statistics.udpDatagramsReceived += 1
            seed.datagram(d, mayBeCoalesced: receiveOffload)
            return
        }
        if let header = UDPWire.header(d) {
            if receiveOffload, header.kind == .data, let session = sessions[header.session],
               case let segment = UDPWire.dataHeaderLength + session.chunkSize, count > segment {
                // Several DATA datagrams coalesced by the kernel: equal segments of this
                // session's datagram size, the last possibly shorter (and of any kind).
                server.statistics.udpCoalescedReceives += 1
                var offset = 0
                while offset < count {
                    let piece = UnsafeRawBufferPointer(rebasing: d[offset..<min(offset + segment, count)])
                    offset += segment
                    server.statistics.udpDatagramsReceived += 1
                    if let h = UDPWire.header(piece) { native(h, piece, from: sender) } else { server.statistics.udpDatagramsIgnored += 1 }
                }
                return
            }
            server.statistics.udpDatagramsReceived += 1
            native(header, d, from: sender)
            return
        }
        server.statistics.udpDatagramsReceived += 1
        if let size = UDPWire.seedSize(d) {
            startSeed(size: size, from: sender)
            return
        }
        server.statistics.udpDatagramsIgnored += 1
    }

    private func endOfBatch() {
        let now = Self.microseconds()
        for s in dirty { s.poll(now: now) }
        dirty.removeAll(keepingCapacity: true)
    }

    private func tick() {
        let now = Self.microseconds()
        for s in Array(seedSessions.values) { s.tick(now: now) }
        for s in Array(sessions.values) { s.tick(now: now) }
    }

    static func microseconds() -> UInt64 { monotonicMicroseconds() }

    // MARK: - Seed

    private func startSeed(size: UInt64, from source: SocketAddress) {
        guard !closing else { return }
        if let refusal = admission.seedStart(size: size, seedSessions: seedSessions.count, draining: server.isDraining) {
            // Seed UDP cannot answer: the log is where the sender's operator learns of it.
            server.statistics.udpSessionsRefused += 1
            logger.warning("udp seed upload refused: \(refusal)", metadata: ["source": "\(source)", "declared": "\(size)"])
            return
        }
        if let full = server.disk.reserve(size) {
            server.statistics.udpSessionsRefused += 1
            logger.warning("udp seed upload refused: \(full)", metadata: ["source": "\(source)"])
            return
        }
        let session = SeedSessionDriver(receiver: self, source: source, declaredSize: size, now: Self.microseconds())
        seedSessions[source] = session
        liveSessions += 1
        session.start()
    }

    func seedSessionEnded(_ s: SeedSessionDriver) {
        if seedSessions[s.source] === s { seedSessions[s.source] = nil }
        if !s.diskReleased {
            s.diskReleased = true
            server.disk.release(s.declaredSize)
        }
        server.udpUploadEnded()
    }

    // MARK: - Native

    private func native(_ header: UDPWire.Header, _ d: UnsafeRawBufferPointer, from source: SocketAddress) {
        switch header.kind {
        case .data, .finish, .abort:
            // Unknown session ids and datagrams from another address get nothing and change nothing.
            guard let session = sessions[header.session], session.source == source else {
                server.statistics.udpDatagramsIgnored += 1
                return
            }
            switch header.kind {
            case .data: session.data(header, d)
            case .finish: session.finish(d)
            default: session.abort(d)
            }
            if !session.isDirty {
                session.isDirty = true
                dirty.append(session)
            }
        case .initial:
            answerInitial(d, from: source)
        case .start:
            start(d, from: source)
        case .cookie, .accept, .status:
            server.statistics.udpDatagramsIgnored += 1
        }
    }

    func markClean(_ s: NativeSessionDriver) { s.isDirty = false }

    /// The stateless answer to INIT: one COOKIE, far smaller than the padded INIT.
    private func answerInitial(_ d: UnsafeRawBufferPointer, from source: SocketAddress) {
        guard !closing, let initial = UDPWire.decodeInitial(d) else {
            server.statistics.udpDatagramsIgnored += 1
            return
        }
        let reply = UDPWire.encode(admission.cookie(for: initial, source: source.identityBytes, now: Self.seconds()), packet: nextPacket())
        precondition(reply.count < d.count)
        send(reply, to: source)
    }

    private func start(_ d: UnsafeRawBufferPointer, from source: SocketAddress) {
        guard !closing, let start = UDPWire.decodeStart(d) else {
            server.statistics.udpDatagramsIgnored += 1
            return
        }
        guard admission.cookieIsValid(start, source: source.identityBytes, now: Self.seconds()) else {
            // Spoofed, stale or forged: no reply, no state.
            server.statistics.udpDatagramsIgnored += 1
            return
        }
        // The source is verified from here on.
        let key = NonceKey(source: source, nonce: start.clientNonce)
        if let id = byNonce[key], let existing = sessions[id] {
            existing.repeatAccept()
            return
        }
        let refuse: (ProtocolError) -> Void = { [self] error in
            server.statistics.udpSessionsRefused += 1
            logger.warning("udp upload refused: \(error)", metadata: ["source": "\(source)"])
            send(UDPWire.encodeAbort(code: error.code, message: error.description, session: 0, packet: nextPacket()), to: source)
        }
        let decision = admission.start(start, nameBytes: UDPWire.startNameBytes(d) ?? [], host: hostKey(source), draining: server.isDraining)
        guard case .admit(let grant) = decision else {
            if case .refuse(let error) = decision { refuse(error) }
            return
        }
        let chunkSize = grant.chunkSize, windowChunks = grant.windowChunks
        // No room for a new upload: only one stored before (answered from its receipt) goes on.
        let refusal = server.disk.reserve(start.file.size)
        var file = start.file
        file.name = grant.name
        var id: UInt64 = 0
        repeat { id = UInt64.random(in: 1...UInt64.max) } while sessions[id] != nil
        let session = NativeSessionDriver(receiver: self, id: id, source: source, clientNonce: start.clientNonce, file: file,
                                          chunkSize: chunkSize, windowChunks: windowChunks, newUploadRefusal: refusal)
        sessions[id] = session
        liveSessions += 1
        byNonce[key] = id
        session.open()
    }

    private func hostKey(_ a: SocketAddress) -> [UInt8] { a.hostIdentityBytes }

    func nativeSessionEnded(_ s: NativeSessionDriver) {
        guard sessions[s.id] === s else { return }
        sessions[s.id] = nil
        admission.sessionRemoved()
        byNonce[NonceKey(source: s.source, nonce: s.clientNonce)] = nil
        releaseSlot(s)
    }

    /// The session no longer counts against the caps (finished, or ended). Once per session.
    func releaseSlot(_ s: NativeSessionDriver) {
        guard s.holdsSlot else { return }
        s.holdsSlot = false
        if s.newUploadRefusal == nil { server.disk.release(s.file.size) }
        admission.slotReleased(host: hostKey(s.source))
        server.udpUploadEnded()
    }

    func ringReleased(_ bytes: Int) { admission.ringReleased(bytes) }

    // MARK: - Sending

    func nextPacket() -> UInt64 {
        packetNumber += 1
        return packetNumber
    }

    @discardableResult
    func send(_ bytes: [UInt8], to address: SocketAddress) -> Bool {
        guard !closing else { return false }
        let sent = bytes.withUnsafeBytes { p in (try? socket.trySend(p, to: address)) != nil }
        if sent {
            server.statistics.udpDatagramsSent += 1
            server.statistics.udpBytesSent += UInt64(bytes.count)
        }
        return sent
    }

    static func seconds() -> UInt32 { UInt32(truncatingIfNeeded: monotonicMicroseconds() / 1_000_000) }
}


// MARK: - Seed sessions

/// Drives one seed UDP upload: the machine decides, this object appends to the partial file in
/// large writes (two 256 KiB buffers: one filling, one being written) and stores or discards it.
/// Owned by the `UDPReceiver` until it ends.
final class SeedSessionDriver {
    /// Strong: a file operation's callback may run after the receiver dropped this session.
    let receiver: UDPReceiver
    let source: SocketAddress
    private var machine: SeedUDPSession
    private var fd: FileDescriptor?
    /// The upload's file once open (`fd` is its descriptor while this session holds it).
    private var partial: Store.SeedPartial?
    private var path: String { partial?.label ?? "" }
    private var opening = true
    private static let bufferSize = 256 * 1024
    private var filling: UnsafeMutableRawBufferPointer
    private var spare: UnsafeMutableRawBufferPointer
    private var filled = 0
    private var writeInFlight = false
    private var fileOffset: UInt64 = 0
    private var dropped: UInt64 = 0
    private var outcome: SeedUDPSession.Outcome?
    private var failure: String?
    private var ended = false

    var declaredSize: UInt64 { machine.declaredSize }
    /// Its disk reservation was given back (once, when it ended).
    var diskReleased = false

    init(receiver: UDPReceiver, source: SocketAddress, declaredSize: UInt64, now: UInt64) {
        self.receiver = receiver
        self.source = source
        machine = SeedUDPSession(declaredSize: declaredSize, now: now)
        filling = .allocate(byteCount: Self.bufferSize, alignment: 64)
        spare = .allocate(byteCount: Self.bufferSize, alignment: 64)
    }

    deinit {
        filling.deallocate()
        spare.deallocate()
    }

    func start() {
        receiver.server.logger.debug("udp seed upload started", metadata: ["source": "\(source)", "declared": "\(machine.declaredSize)"])
        receiver.server.store.openSeedPartial { [self] result in
            opening = false
            switch result {
            case .success(let opened):
                self.fd = opened.fd
                partial = opened
                if ended {
                    receiver.server.store.discardSeed(opened)
                    self.fd = nil
                    return
                }
                pump()
            case .failure(let e):
                failure = e.description
                pump()
            }
        }
        apply(machine.started(), nil)
    }

    /// `mayBeCoalesced`: receive offload is on, so `d` may be several datagrams end to end.
    func datagram(_ d: UnsafeRawBufferPointer, mayBeCoalesced: Bool) {
        let now = UDPReceiver.microseconds()
        if mayBeCoalesced, d.count > 3 {
            let endsWithMarker = UDPWire.isSeedEnd(UnsafeRawBufferPointer(rebasing: d[(d.count - 3)...]))
            apply(machine.coalescedDatagram(count: d.count, endsWithMarker: endsWithMarker, now: now), d)
            return
        }
        apply(machine.datagram(count: d.count, isEndMarker: UDPWire.isSeedEnd(d), now: now), d)
    }

    func tick(now: UInt64) {
        apply(machine.tick(now: now, timeout: UInt64(receiver.limits.idleTimeout * 1_000_000)), nil)
    }

    func shutdown() { apply(machine.shutdown(), nil) }

    private func apply(_ action: SeedUDPSession.Action, _ d: UnsafeRawBufferPointer?) {
        switch action {
        case .none:
            return
        case .append(let n):
            if n > 0, let d { append(UnsafeRawBufferPointer(rebasing: d[0..<n])) }
        case .appendAndFinish(let n, let outcome):
            if n > 0, let d { append(UnsafeRawBufferPointer(rebasing: d[0..<n])) }
            self.outcome = outcome
            receiver.seedSessionEnded(self)
            pump(force: true)
        }
    }

    private func append(_ bytes: UnsafeRawBufferPointer) {
        if filled + bytes.count > filling.count {
            pump(force: true)
            if filled + bytes.count > filling.count {
                // Both buffers are in use (the disk is slower than the datagrams): the bytes are
                // lost, exactly as if the network had dropped them; the session cannot complete.
                dropped += UInt64(bytes.count)
                return
            }
        }
        UnsafeMutableRawBufferPointer(rebasing: filling[filled...]).copyMemory(from: bytes)
        filled += bytes.count
        if filled >= Self.bufferSize / 2 { pump() }
    }

    /// Writes the filling buffer when it is worth it (or `force`), and ends the session when all is written.
    private func pump(force: Bool = false) {
        guard !opening, !writeInFlight else { return }
        let store = receiver.server.store
        if let failure, !ended {
            finishSession(stored: nil, reason: failure)
            return
        }
        guard let fd else { return }
        if filled > 0, force || filled >= Self.bufferSize / 2 || outcome != nil {
            let buffer = filling
            let count = filled
            swap(&filling, &spare)
            filled = 0
            writeInFlight = true
            let offset = fileOffset
            do throws(UVOperationError) {
                try store.fs.write(fd, buffers: CollectionOfOne(UnsafeRawBufferPointer(rebasing: buffer[0..<count])), offset: Int64(offset), target: path) { [self] r in
                    writeInFlight = false
                    switch r {
                    case .success(let n) where n == count:
                        fileOffset += UInt64(n)
                    case .success(let n):
                        failure = "short write of \(n) of \(count) bytes"
                    case .failure(let e):
                        failure = e.description
                    }
                    pump()
                }
            } catch {
                writeInFlight = false
                failure = error.description
                pump()
            }
            return
        }
        guard let outcome, !ended, filled == 0 else { return }
        switch outcome {
        case .complete where dropped == 0:
            guard let partial else { return }
            ended = true
            self.fd = nil
            let name = store.nextSeedName()
            store.commitSeed(partial, name: name) { [self] r in
                switch r {
                case .success(let stored): finishSession(stored: stored, reason: nil)
                case .failure(let e):
                    if let path = partial.path { store.unlinkQuietly(path) }
                    finishSession(stored: nil, reason: e.description)
                }
            }
        case .complete:
            finishSession(stored: nil, reason: "\(dropped) bytes dropped: the disk fell behind")
        case .incomplete(let missing, let reason):
            finishSession(stored: nil, reason: "\(missing) of \(machine.declaredSize) bytes missing at \(reason.rawValue)")
        case .overflow(let extra):
            finishSession(stored: nil, reason: "\(extra) bytes more than the declared \(machine.declaredSize)")
        }
    }

    private func finishSession(stored: String?, reason: String?) {
        ended = true
        let server = receiver.server
        if fd != nil, let partial {
            self.fd = nil
            server.store.discardSeed(partial)
        }
        if let stored {
            server.statistics.uploadsStored += 1
            server.logger.info("stored udp seed upload", metadata: ["name": "\(stored)", "bytes": "\(machine.declaredSize)", "source": "\(source)"])
        } else {
            server.statistics.uploadsFailed += 1
            server.logger.warning("broken udp seed upload: \(reason ?? "?")", metadata: ["source": "\(source)"])
        }
        receiver.seedSessionEnded(self)
        // finishSession runs once, with no open, write or commit in flight.
        receiver.sessionRetired()
    }
}

// MARK: - Native sessions

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
    private var closeRequested: Bool?
    private var finishedAt: UInt64?
    private var ended = false
    private var opening = false
    private var committing = false
    private var retired = false
    private var startedAt: UInt64

    init(receiver: UDPReceiver, id: UInt64, source: SocketAddress, clientNonce: UInt64, file: FileHeader, chunkSize: Int, windowChunks: UInt32, newUploadRefusal: ProtocolError? = nil) {
        self.newUploadRefusal = newUploadRefusal
        self.receiver = receiver
        self.id = id
        self.source = source
        self.clientNonce = clientNonce
        self.file = file
        self.chunkSize = chunkSize
        self.windowChunks = windowChunks
        startedAt = UDPReceiver.microseconds()
    }

    private var server: Server { receiver.server }
    private var ringBytes: Int { Int(windowChunks) * chunkSize }

    func open() {
        opening = true
        server.store.openNative(file, refusingNewWith: newUploadRefusal) { [self] result in
            opening = false
            guard !ended else {
                if case .success(let found) = result {
                    if case .partial(let p) = found { server.store.closeQuietly(p.fd, p.path) }
                    server.store.release(file.uploadID)
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
                case .stored(let receipt):
                    storedReceipt = receipt
                    held = file.size
                }
                let now = UDPReceiver.microseconds()
                machine = ReliableUDPReceiver(.init(chunkSize: chunkSize, totalBytes: file.size - held, windowChunks: windowChunks), now: now)
                if storedReceipt == nil {
                    ring = .allocate(byteCount: ringBytes, alignment: 4096)
                } else {
                    receiver.ringReleased(ringBytes)  // nothing will be received: no ring, its budget back now
                }
                let accept = UDPWire.encode(UDPWire.Accept(clientNonce: clientNonce, baseOffset: held, windowChunks: windowChunks), session: id, packet: receiver.nextPacket())
                acceptDatagram = accept
                receiver.send(accept, to: source)
                machine!.sent(bytes: accept.count)
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
        guard let m = machine else {
            if !ended, now - startedAt > UInt64(receiver.limits.idleTimeout * 1_000_000) { close(keepPartial: true) }
            return
        }
        if m.isFinished {
            if let f = finishedAt, now - f > UInt64(receiver.limits.linger * 1_000_000) { end() }
            return
        }
        if now > m.lastActivity, now - m.lastActivity > UInt64(receiver.limits.idleTimeout * 1_000_000) {
            server.logger.warning("udp upload idle for \(receiver.limits.idleTimeout) s; its partial stays resumable", metadata: ["upload": "\(file.uploadID)", "received": "\(m.cumulative) of \(m.chunkCount) chunks"])
            close(keepPartial: true)
            return
        }
        perform(machine!.poll(now: now))
    }

    private func perform(_ actions: ReliableUDPReceiver.Actions) {
        guard machine != nil else { return }
        if let w = actions.write { write(w) }
        if actions.verify { verify() }
        if actions.sendStatus { sendStatus() }
        if machine!.isFinished, finishedAt == nil { finished() }
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
                    // A short write: write the rest.
                    let restA = n < a.count ? UnsafeRawBufferPointer(rebasing: a[n...]) : UnsafeRawBufferPointer(rebasing: b[(n - a.count)...])
                    let restB = n < a.count ? b : UnsafeRawBufferPointer(start: nil, count: 0)
                    issueWrite(partial, restA, restB, offset: offset + UInt64(n))
                case .success:
                    writeInFlight = false
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
        } else {
            server.store.forgetStored(file.uploadID)
        }
        perform(machine!.verified(matches, detail: "digest mismatch with the upload stored under this id: stored \(receipt.digest.hexString), sender announced \(f.digest.hexString)"))
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
        finishedAt = UDPReceiver.microseconds()
        releaseRing()
        receiver.releaseSlot(self)
        guard machine!.phase == .failed else { return }
        server.statistics.uploadsFailed += 1
        server.logger.warning("udp upload failed: \(machine!.finalMessage ?? "?")", metadata: ["upload": "\(file.uploadID)", "source": "\(source)"])
        if let partial, !writeInFlight {
            self.partial = nil
            // A digest mismatch means the bytes are wrong: start over next time. Other failures
            // (a write error) leave a correct prefix that a later try resumes.
            if finishMessage != nil, machine!.cumulative == machine!.chunkCount {
                server.store.discard(partial.fd, path: partial.path, metaPath: partial.metaPath)
            } else {
                server.store.closeQuietly(partial.fd, partial.path)
            }
            server.store.release(file.uploadID)
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
                server.store.closeQuietly(partial.fd, partial.path)
            } else {
                server.store.discard(partial.fd, path: partial.path, metaPath: partial.metaPath)
            }
            server.store.release(file.uploadID)
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
