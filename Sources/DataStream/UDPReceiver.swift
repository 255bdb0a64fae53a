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
    /// `limits.idleTimeout` in microseconds, converted once: seed sessions ask on every tick.
    let idleTimeoutMicroseconds: UInt64
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
         admission: UDPAdmission.Limits, sharedPort: Bool = false, cookieSecret: [UInt8]? = nil) throws(UVOperationError) {
        self.server = server
        self.store = server.store
        self.logger = server.logger
        self.limits = limits
        self.idleTimeoutMicroseconds = TimeLimit.units(limits.idleTimeout, perSecond: 1e6) ?? .max
        self.admission = UDPAdmission(limits: admission, cookies: HandshakeCookie(secret: cookieSecret))
        socket = try UDPSocket(loop: server.loop, batchedReceive: true)
        do throws(UVOperationError) {
            if sharedPort { try socket.bindShared(address) } else { try socket.bind(address) }
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
        if let refusal = admission.seedStart(size: size, host: hostKey(source), draining: server.isDraining) {
            // Seed UDP cannot answer: the log is where the sender's operator learns of it.
            server.statistics.udpSessionsRefused += 1
            server.noisy(.udpSeedRefused, .warning, "udp seed upload refused: \(refusal)", metadata: ["source": "\(source)", "declared": "\(size)"])
            return
        }
        if let full = server.disk.reserve(size) {
            admission.seedEnded(host: hostKey(source))
            server.statistics.udpSessionsRefused += 1
            server.noisy(.udpSeedRefused, .warning, "udp seed upload refused: \(full)", metadata: ["source": "\(source)"])
            return
        }
        let session = SeedSessionDriver(receiver: self, source: source, declaredSize: size, now: Self.microseconds())
        seedSessions[source] = session
        liveSessions += 1
        session.start()
    }

    func seedSessionEnded(_ s: SeedSessionDriver) {
        if seedSessions[s.source] === s {
            seedSessions[s.source] = nil
            admission.seedEnded(host: hostKey(s.source))
        }
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
            server.noisy(.udpRefused, .warning, "udp upload refused: \(error)", metadata: ["source": "\(source)"])
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
