import DataStreamCore
import Glibc
import UV

/// The UDP client: sends files one after another over native reliable UDP (handshake, paced
/// chunks in `sendmmsg` batches, retransmissions the receiver asks for ahead of new data,
/// FINISH with the digest) or like the seed's UDP client (size datagram, 1024-byte datagrams
/// with a pause, `EOF`; no feedback exists in that protocol).
///
/// What it sends are `Source`s: files (read ahead into a bounded ring on libuv's threadpool, see
/// `FileReadAhead`) or, for the load generator, uploads whose bytes derive from a `BenchContent`
/// (sent straight from its shared pattern).
///
/// Runs on a loop the caller owns and runs; owns its socket, its pacing timer and the reader of
/// the file being sent.
public final class UDPSender {
    public struct Options: Sendable {
        public var host: String
        public var port: Int
        public var token: String?
        public var digest: DigestAlgorithm = .xxh3_128
        /// Payload bytes per DATA datagram (native).
        public var chunkSize = UDPWire.defaultChunkSize
        /// Cap on the pacing rate, bytes per second (nil: found by the rate controller alone).
        public var maxRate: Double?
        /// Send like the seed's UDP client.
        public var seedProtocol = false
        /// Seed protocol: bytes per datagram and the pause after each (the seed client's: 1024, 1 ms).
        public var seedDatagramSize = 1024
        public var seedPause: Double = 0.001
        /// Give up when the receiver has said nothing for this long (seconds).
        public var silenceTimeout: Double = 10
        /// Gives the files their upload ids (default: the secret of the default state directory).
        public var identity: UploadIdentity?
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    /// Counters over every native transfer of this sender, for reports and benchmarks.
    public struct TransferStatistics: Sendable {
        /// DATA datagrams, retransmissions included.
        public var datagramsSent: UInt64 = 0
        /// Chunks sent again because the receiver reported them missing.
        public var retransmitted: UInt64 = 0
        public var statusesReceived: UInt64 = 0
        /// The bandwidth estimate at the end of the last transfer, bytes per second.
        public var finalRate: Double = 0
        /// The smallest round trip seen, microseconds.
        public var minimumRoundTrip: UInt64 = 0
    }

    public let loop: Loop
    public let options: Options
    public private(set) var totalSent: UInt64 = 0
    public private(set) var statistics = TransferStatistics()
    private var socket: UDPSocket?
    private var timer: UV.Timer?
    /// One upload's bytes.
    public enum Source: Sendable {
        /// A regular file, stored under its last path component.
        case file(String)
        /// Upload `index` of a bench run: its bytes derive from `content` (header, then the
        /// shared pattern); stored as `bench-SEED-INDEX.bin` under the given upload id.
        case bench(BenchContent, index: UInt64, size: UInt64, uploadID: UploadID)

        var label: String {
            switch self {
            case .file(let path): path
            case .bench(let c, let index, _, _): "bench-\(c.seed)-\(index).bin"
            }
        }
    }

    private var sources: [Source] = []
    /// The first bytes of a bench upload (its header lies there), laid out once per upload.
    private let benchPrefix = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    private var bench: (content: BenchContent, index: UInt64)?
    private var index = 0
    private var outcomes: [Sender.Outcome] = []
    private var completion: (([Sender.Outcome]) -> Void)?
    private let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)
    private let batch = UDPBatch(messageCapacity: 16)
    private var packet: UInt64 = 0
    private var sendTimes = [UInt64](repeating: 0, count: 1 << 16)

    // The file being sent.
    private lazy var fs = FileSystem(loop: loop)
    private var reader: FileReadAhead?
    /// Resuming: units of the prefix the receiver holds that have been hashed.
    private var prefixHashed: UInt64 = 0
    private var fileSize: UInt64 = 0
    private var uploadID = UploadID(bytes: [UInt8](repeating: 0, count: 16))
    private var clientNonce: UInt64 = 0
    private var state = State.idle
    private var lastHeard: UInt64 = 0
    private var lastControl: UInt64 = 0
    private var start: UDPWire.Start?
    private var session: UInt64 = 0
    private var base: UInt64 = 0
    private var chunkSize = 0
    private var scheduler = UDPSendScheduler(chunkCount: 0, windowChunks: 0)
    private var rate = RateController()
    private var budget: Double = 0
    private var lastPace: UInt64 = 0
    private var digester: Digester?
    private var finishDatagram: [UInt8]?
    private var finishDigest: [UInt8] = []
    private var seedOffset: UInt64 = 0
    private var seedNext: UInt64 = 0

    private enum State { case idle, opening, awaitingCookie, awaitingAccept, hashingPrefix, sending, seed, done }

    /// The most of a file read ahead of the native sender: the window in flight comes from here.
    private static let readAheadBytes = 16 << 20
    /// Reads of a file are at most this long.
    private static let readBytes = 1 << 20
    /// The seed sender, which sends a datagram per pause, reads less ahead.
    private static let seedReadAheadBytes = 1 << 20

    public init(loop: Loop, options: Options) {
        self.loop = loop
        self.options = options
    }

    deinit {
        receiveBuffer.deallocate()
        benchPrefix.deallocate()
    }

    /// Sends the files at `paths` in order and calls `completion` with one outcome per path.
    public func send(_ paths: [String], completion: @escaping ([Sender.Outcome]) -> Void) {
        send(sources: paths.map { .file($0) }, completion: completion)
    }

    /// Sends `sources` in order and calls `completion` with one outcome per source.
    public func send(sources: [Source], completion: @escaping ([Sender.Outcome]) -> Void) {
        self.sources = sources
        self.completion = completion
        outcomes = sources.map { Sender.Outcome(path: $0.label) }
        do throws(UVOperationError) {
            let address = try SocketAddress.resolve(options.host, port: options.port, on: loop)
            let s = try UDPSocket(loop: loop)
            socket = s
            try s.connect(address)
            _ = try? s.requestSendBuffer(4 << 20)
            _ = try? s.requestReceiveBuffer(1 << 20)
            try? s.setDontFragment(ipv6: address.isIPv6)
            try s.startReceiving(UDPSenderReceiver(self))
            let t = try UV.Timer(loop: loop)
            timer = t
            try t.start(timeout: 1, repeat: 1) { [unowned self] in tick() }
        } catch {
            for i in outcomes.indices { outcomes[i].message = error.description }
            finishAll()
            return
        }
        nextFile()
    }

    private func now() -> UInt64 { monotonicMicroseconds() }

    /// Stops at once: the current and remaining files fail with `reason`. With `tellReceiver`
    /// an ABORT ends the receiver's session (its partial stays resumable); without it the
    /// receiver finds out by its idle timeout, as after a crash.
    public func cancel(reason: String = "cancelled", tellReceiver: Bool = true) {
        guard state != .done else { return }
        if tellReceiver, state == .sending || state == .hashingPrefix {
            sendControl(UDPWire.encodeAbort(code: 0, message: reason, session: session, packet: nextPacket()))
        }
        for i in index..<outcomes.count where !outcomes[i].succeeded { outcomes[i].message = reason }
        finishAll()
    }

    // MARK: - Files

    private func nextFile() {
        closeSource()
        guard index < sources.count else { finishAll(); return }
        switch sources[index] {
        case .file(let path):
            guard let (size, id) = (options.identity ?? .standard).identity(of: path) else {
                fail("cannot read \(path): \(errno == 0 ? "not a regular file" : String(cString: strerror(errno)))")
                return
            }
            fileSize = size
            uploadID = id
            state = .opening
            do {
                try fs.open(path, flags: [.readOnly]) { [weak self] result in
                    guard let self, state == .opening else {
                        if case .success(let fd) = result, let fs = self?.fs { try? fs.close(fd) }
                        return
                    }
                    switch result {
                    case .failure(let e): fail(e.description)
                    case .success(let fd): opened(fd, path: path)
                    }
                }
            } catch {
                fail(error.description)
            }
            return
        case .bench(let content, let i, let size, let id):
            fileSize = size
            bench = (content, i)
            var at = 0
            content.forEachSlice(of: i, from: 0, count: min(size, UInt64(benchPrefix.count))) { slice in
                UnsafeMutableRawBufferPointer(rebasing: benchPrefix[at..<(at + slice.count)]).copyMemory(from: slice)
                at += slice.count
            }
            uploadID = id
        }
        begin()
    }

    private func opened(_ fd: FileDescriptor, path: String) {
        let r = FileReadAhead(fs: fs, fd: fd, path: path, fileSize: fileSize)
        r.onReady = { [weak self] in self?.readAheadReady() }
        r.onFailure = { [weak self] message in self?.readFailed(message) }
        reader = r
        begin()
    }

    /// The source is ready to be read: announce it.
    private func begin() {
        outcomes[index].size = fileSize
        lastHeard = now()
        if options.seedProtocol {
            state = .seed
            seedOffset = 0
            seedNext = now()
            let unit = options.seedDatagramSize
            reader?.begin(ReadAheadWindow(start: 0, end: fileSize, unitSize: unit, capacity: max(1, Self.seedReadAheadBytes / unit), maxReadBytes: Self.readBytes))
            sendControl(Array(String(fileSize).utf8))
            return
        }
        clientNonce = UInt64.random(in: 1...UInt64.max)
        state = .awaitingCookie
        sendInitial()
    }

    /// More of the file is in the ring.
    private func readAheadReady() {
        switch state {
        case .hashingPrefix: hashPrefix()
        case .sending: pace()
        case .seed: seedPace(now())
        default: return
        }
    }

    /// The file cannot be read further (it shrank, or the read failed): the upload fails, and a
    /// native receiver is told, so that it ends the session at once.
    private func readFailed(_ message: String) {
        guard state != .done, state != .idle else { return }
        if state == .sending || state == .hashingPrefix {
            sendControl(UDPWire.encodeAbort(code: 0, message: "the sender could not read the file", session: session, packet: nextPacket()))
        }
        fail(message)
    }

    /// `count` bytes of a bench upload from `offset` (`count` at most 64 KiB), valid until the
    /// next upload starts.
    private func benchBytes(at offset: Int, count: Int) -> UnsafeRawBufferPointer {
        guard let bench else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        if offset + count <= benchPrefix.count { return UnsafeRawBufferPointer(rebasing: benchPrefix[offset..<(offset + count)]) }
        return bench.content.window(of: bench.index, offset: UInt64(offset), count: count)
    }

    private func closeSource() {
        reader?.close()
        reader = nil
        bench = nil
    }

    private func fail(_ message: String) {
        outcomes[index].message = message
        outcomes[index].succeeded = false
        advance()
    }

    private func advance() {
        state = .idle
        finishDatagram = nil
        batch.removeAll()
        index += 1
        nextFile()
    }

    private func finishAll() {
        closeSource()
        state = .done
        timer?.close()
        timer = nil
        socket?.close()
        socket = nil
        let c = completion
        completion = nil
        c?(outcomes)
    }

    // MARK: - Control datagrams

    private func nextPacket() -> UInt64 {
        packet += 1
        return packet
    }

    private func sendControl(_ bytes: [UInt8]) {
        lastControl = now()
        _ = bytes.withUnsafeBytes { p in try? socket?.trySend(p, UnsafeRawBufferPointer(start: nil, count: 0), to: nil) }
    }

    private func sendInitial() {
        sendControl(UDPWire.encode(UDPWire.Initial(clientNonce: clientNonce, chunkSize: UInt16(clamping: options.chunkSize)), packet: nextPacket()))
    }

    func receiveBuffer(for socket: UDPSocket, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? { receiveBuffer }

    func socket(_ socket: UDPSocket, didReceive count: Int, in datagram: UnsafeMutableRawBufferPointer?, from sender: SocketAddress?, isMoreOfBatch: Bool, error: UVError?) {
        guard error == nil, sender != nil, let datagram else { return }
        let d = UnsafeRawBufferPointer(rebasing: datagram[0..<count])
        guard let h = UDPWire.header(d) else { return }
        lastHeard = now()
        switch (state, h.kind) {
        case (.awaitingCookie, .cookie):
            guard let c = UDPWire.decodeCookie(d), c.clientNonce == clientNonce else { return }
            if c.authenticationRequired && options.token == nil { fail("the receiver requires a token (--token)"); return }
            let mac = options.token.map { HandshakeCookie.authentication(token: $0, cookie: c.cookie, clientNonce: clientNonce) } ?? []
            let label = sources[index].label
            let name = label.split(separator: "/").last.map(String.init) ?? label
            start = UDPWire.Start(clientNonce: clientNonce, cookie: c.cookie, chunkSize: c.chunkSize,
                                  file: FileHeader(uploadID: uploadID, size: fileSize, digest: options.digest, name: name), mac: mac)
            state = .awaitingAccept
            sendControl(UDPWire.encode(start!, packet: nextPacket()))
        case (.awaitingAccept, .accept):
            guard let a = UDPWire.decodeAccept(d), a.clientNonce == clientNonce, let start else { return }
            accepted(a, session: h.session, chunkSize: Int(start.chunkSize))
        case (.awaitingAccept, .abort), (.awaitingCookie, .abort), (.sending, .abort):
            let reason = UDPWire.decodeAbort(d)?.message ?? "refused"
            fail("refused by the receiver: \(reason)")
        case (.sending, .status):
            guard h.session == session, let s = UDPWire.decodeStatus(d) else { return }
            status(s)
        case (.hashingPrefix, .abort):
            let reason = UDPWire.decodeAbort(d)?.message ?? "refused"
            fail("refused by the receiver: \(reason)")
        default:
            return
        }
    }

    private func accepted(_ a: UDPWire.Accept, session: UInt64, chunkSize: Int) {
        guard a.baseOffset <= fileSize else { fail("the receiver holds more than the file"); return }
        self.session = session
        self.chunkSize = chunkSize
        base = a.baseOffset
        outcomes[index].resumedFrom = base
        let cs = UInt64(chunkSize)
        let chunks = UInt32((fileSize - base + cs - 1) / cs)
        scheduler = UDPSendScheduler(chunkCount: chunks, windowChunks: a.windowChunks)
        var rc = RateController.Configuration()
        rc.maxRate = options.maxRate
        rate = RateController(rc)
        budget = 0
        lastPace = now()
        digester = Digester(options.digest)
        guard let reader else {
            // A bench upload: its bytes are at hand.
            var at = 0
            while at < Int(base) {
                let n = min(Int(base) - at, 64 * 1024)
                digester?.update(benchBytes(at: at, count: n))
                at += n
            }
            startSending()
            return
        }
        // The digest covers the whole file: hash what the receiver already holds first.
        state = .hashingPrefix
        prefixHashed = 0
        reader.begin(ReadAheadWindow(start: 0, end: base, unitSize: Self.readBytes, capacity: 2, maxReadBytes: Self.readBytes))
        hashPrefix()
    }

    private func hashPrefix() {
        guard let reader else { return }
        while let b = reader.bytes(of: prefixHashed) {
            digester?.update(b)
            prefixHashed += 1
        }
        reader.release(below: prefixHashed)
        guard prefixHashed >= reader.window.unitCount else { return }
        reader.begin(ReadAheadWindow(start: base, end: fileSize, unitSize: chunkSize, capacity: max(1, Self.readAheadBytes / chunkSize), maxReadBytes: Self.readBytes))
        startSending()
    }

    private func startSending() {
        state = .sending
        pace()
    }

    private func status(_ s: UDPWire.Status) {
        let t = now()
        statistics.statusesReceived += 1
        let sentAt = sendTimes[Int(s.echoPacket & 0xFFFF)]
        if s.echoPacket > 0, packet - s.echoPacket < 0xFFFF, sentAt > 0, t > sentAt + UInt64(s.echoDelay) {
            rate.roundTripSample(t - sentAt - UInt64(s.echoDelay))
        }
        rate.delivered(receivedBytes: s.receivedBytes, receiverTime: s.receiverTime, now: t)
        switch s.phase {
        case .stored:
            outcomes[index].succeeded = true
            outcomes[index].storedName = s.message
            outcomes[index].digest = finishDigest.hexString
            wrapUp()
            advance()
        case .failed:
            outcomes[index].message = s.message
            wrapUp()
            advance()
        case .receiving, .verifying:
            scheduler.status(s)
            reader?.release(below: UInt64(scheduler.cumulative))
            pace()
        }
    }

    private func wrapUp() {
        statistics.retransmitted += scheduler.retransmitted
        statistics.finalRate = rate.bandwidth
        statistics.minimumRoundTrip = rate.minimumRoundTrip == .max ? 0 : rate.minimumRoundTrip
    }

    // MARK: - Pacing

    private func tick() {
        let t = now()
        switch state {
        case .awaitingCookie, .awaitingAccept:
            if t - lastHeard > UInt64(options.silenceTimeout * 1_000_000) { fail("no answer from \(options.host):\(options.port) (is UDP enabled there?)"); return }
            if t - lastControl > 200_000 {
                if state == .awaitingCookie { sendInitial() } else if let start { sendControl(UDPWire.encode(start, packet: nextPacket())) }
            }
        case .sending:
            if t - lastHeard > UInt64(options.silenceTimeout * 1_000_000) { fail("the receiver stopped answering"); return }
            pace()
        case .hashingPrefix:
            // The receiver expects data soon; reading the prefix is local work, so it is not
            // timed here: a failed read ends it.
            return
        case .seed:
            seedPace(t)
        case .idle, .opening, .done:
            return
        }
    }

    /// Sends what the pacing budget allows: retransmissions first, then new chunks in the window.
    private func pace() {
        guard state == .sending, let socket else { return }
        let t = now()
        let r = rate.pacingRate
        let datagramBytes = Double(chunkSize + UDPWire.dataHeaderLength)
        budget = min(budget + r * Double(t - lastPace) / 1_000_000, max(r * 0.002, datagramBytes * 64))
        lastPace = t
        // Datagrams left in the batch from an EAGAIN go first.
        if batch.count > 0 {
            guard let n = try? socket.send(batch), n > 0 else { return }
        }
        let largest = UDPWire.dataHeaderLength + chunkSize
        var next: (chunk: UInt32, retransmission: Bool)
        while budget >= datagramBytes {
            if batch.isFull(for: largest) {
                _ = try? socket.send(batch)
                if batch.count > 0 { return }  // the kernel is full: the rest goes next time
            }
            let payload: UnsafeRawBufferPointer
            if let reader {
                guard let (chunk, retransmission) = scheduler.next(readyBelow: UInt32(clamping: reader.window.ready)),
                      let bytes = reader.bytes(of: UInt64(chunk)) else { break }
                payload = bytes
                next = (chunk, retransmission)
            } else {
                guard let (chunk, retransmission) = scheduler.next() else { break }
                let offset = Int(base) + Int(chunk) * chunkSize
                payload = benchBytes(at: offset, count: Int(min(UInt64(chunkSize), fileSize - UInt64(offset))))
                next = (chunk, retransmission)
            }
            let (chunk, retransmission) = next
            let length = payload.count
            if !retransmission {
                digester?.update(payload)
                totalSent += UInt64(length)
                outcomes[index].bytesSent += UInt64(length)
            }
            let pn = nextPacket()
            sendTimes[Int(pn & 0xFFFF)] = t
            let datagram = UDPWire.dataHeaderLength + length
            batch.append(length: datagram) { h in
                UDPWire.writeDataHeader(session: session, packet: pn, chunk: chunk, into: h)
                (h + UDPWire.dataHeaderLength).copyMemory(from: payload.baseAddress!, byteCount: length)
            }
            statistics.datagramsSent += 1
            budget -= Double(datagram)
        }
        if batch.count > 0 { _ = try? socket.send(batch) }
        if scheduler.allSentOnce, batch.count == 0 {
            if finishDatagram == nil, let digester {
                finishDigest = digester.finish()
                finishDatagram = UDPWire.encode(UDPWire.Finish(chunkCount: scheduler.chunkCount, algorithm: options.digest, digest: finishDigest), session: session, packet: nextPacket())
                self.digester = nil
                sendControl(finishDatagram!)
            } else if let f = finishDatagram, t - lastControl > max(20_000, 3 * (rate.minimumRoundTrip == .max ? 10_000 : rate.minimumRoundTrip)) {
                sendControl(f)
            }
        }
    }

    /// The seed client: one datagram per pause, then `EOF`.
    private func seedPace(_ t: UInt64) {
        guard let socket else { return }
        let size = UInt64(options.seedDatagramSize)
        let pause = UInt64(options.seedPause * 1_000_000)
        var sentNow = 0
        while seedOffset < fileSize, t >= seedNext, sentNow < 4096 {
            let n = Int(min(size, fileSize - seedOffset))
            let unit = seedOffset / size
            let payload: UnsafeRawBufferPointer
            if let reader {
                guard let bytes = reader.bytes(of: unit) else { return }  // not read yet
                payload = bytes
            } else {
                payload = benchBytes(at: Int(seedOffset), count: n)
            }
            guard (try? socket.trySend(payload, UnsafeRawBufferPointer(start: nil, count: 0), to: nil)) != nil else { return }
            reader?.release(below: unit + 1)
            seedOffset += UInt64(n)
            totalSent += UInt64(n)
            outcomes[index].bytesSent += UInt64(n)
            seedNext += pause
            sentNow += 1
        }
        if seedOffset >= fileSize {
            sendControl(Array("EOF".utf8))
            outcomes[index].succeeded = true
            outcomes[index].message = "sent (the seed UDP protocol has no acknowledgement)"
            advance()
        }
    }
}

/// Hands the socket's datagrams to its sender, so that the callbacks stay out of the sender's
/// public API. Held by the socket while it receives, and holding the sender
/// (as the sender itself was held before): a send in progress keeps its sender alive.
private final class UDPSenderReceiver: UDPSocketReceiver {
    let sender: UDPSender
    init(_ sender: UDPSender) { self.sender = sender }
    func receiveBuffer(for socket: UDPSocket, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? {
        sender.receiveBuffer(for: socket, suggestedSize: suggestedSize)
    }
    func socket(_ socket: UDPSocket, didReceive count: Int, in datagram: UnsafeMutableRawBufferPointer?, from sender: SocketAddress?, isMoreOfBatch: Bool, error: UVError?) {
        self.sender.socket(socket, didReceive: count, in: datagram, from: sender, isMoreOfBatch: isMoreOfBatch, error: error)
    }
}
