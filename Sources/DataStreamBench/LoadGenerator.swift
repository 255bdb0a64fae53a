import DataStream
import DataStreamCore
import Histogram
import UV

/// The load generator behind `datastream bench`: keeps `concurrency` uploads in flight against
/// one receiver, each on its own TCP connection (or UDP socket), until `uploads` are done or
/// `duration` passed.
/// Every upload's bytes come from `BenchContent` (derived from the seed and the upload's index)
/// and are written straight from its shared pattern, so the generator copies no file bytes.
///
/// Runs on a loop the caller owns and runs (one thread, non-blocking); owns its connections.
public final class LoadGenerator {
    /// The wire protocol the uploads speak.
    public enum WireProtocol: String, CaseIterable, Sendable {
        /// Size digits, the bytes, close (PyDataStream's framing).
        case seed
        /// DataStream's native protocol: HELLO, FILE, data, END, RESULT, one file per connection.
        case native
        /// DataStream's reliable UDP (docs/PROTOCOL.md §5), one `UDPSender` per upload: done
        /// when the receiver's final STATUS says stored.
        case udpNative = "udp-native"
        /// The seed's UDP framing (size datagram, 1024-byte datagrams, `EOF`). It has no
        /// acknowledgement: an upload is "done" once sent, and only `--verify` shows what arrived.
        case udpSeed = "udp-seed"
        /// `PUT /NAME` over HTTP/1.1, one request per connection (`Connection: close`): done
        /// when the receiver answers 2xx and closes. DataStream and any WebDAV server (nginx).
        case httpPut = "http-put"
        /// DataStream's upload WebSocket at `/ws` (docs/PROTOCOL.md §8), one upload per
        /// connection: the handshake, `begin` once `hello` came, binary frames once `ready`
        /// came; done at `stored`.
        case webSocket = "websocket"
    }

    /// Where to send, what, and how much.
    public struct Options: Sendable {
        public var host: String
        public var port: Int
        public var wireProtocol: WireProtocol = .seed
        public var concurrency = 16
        /// Stop after this many uploads (started ones finish)...
        public var uploads: UInt64? = 100
        /// ...or once this many seconds passed (whichever comes first).
        public var duration: Double?
        public var sizes: SizeDistribution = .fixed(1 << 20)
        public var seed: UInt64 = 1
        public var token: String?
        /// Bytes per socket write (at most `BenchContent.windowLimit`).
        public var writeSize = 256 * 1024
        /// An upload that makes no progress (connect, bytes taken, an answer) for this many
        /// seconds fails as `timeout`, so a stalled receiver cannot hang the run.
        public var stallTimeout: Double = 30
        /// For an IPv4 loopback target: connections leave from this many source addresses
        /// (127.0.0.1, 127.0.0.2, ...) in turn. With one, the kernel searches one address's ports
        /// among thousands in TIME_WAIT for every connection, which costs the generator a large
        /// share of its CPU when uploads are small. Other targets: the kernel's choice.
        public var sourceAddresses = 16
        /// Open model: start this many uploads per second on schedule, whether or not earlier
        /// ones finished (`concurrency` still caps those in flight). nil: closed model, a new
        /// upload as soon as one ends.
        public var rate: Double?
        /// This generator's share of a run split over threads (`LoadGroup`): its uploads are
        /// `indexOffset`, `indexOffset + indexStride`, ... (`uploads` counts them), so every
        /// upload of the run has its own index, content and id. Its schedule starts
        /// `scheduleOffset` seconds late, so the shares interleave.
        public var indexOffset: UInt64 = 0
        public var indexStride: UInt64 = 1
        public var scheduleOffset: Double = 0
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    /// Why an upload failed, for the report's "errors by kind".
    public enum FailureKind: String, Sendable, CaseIterable {
        /// The connection could not be made.
        case connect
        /// A read or write failed (reset, broken pipe).
        case connection
        /// The receiver closed before the upload was confirmed.
        case closedEarly = "closed-early"
        /// The receiver answered with an ERROR frame or a failed RESULT.
        case rejected
        /// The receiver's answer made no sense.
        case protocolError = "protocol"
        /// No progress for `stallTimeout` seconds.
        case timeout
    }

    /// Where a run stands (for live progress) or how it ended.
    public struct Report: Sendable {
        public var completed: UInt64 = 0
        public var failed: UInt64 = 0
        public var inFlight = 0
        public var bytes: UInt64 = 0
        public var seconds: Double = 0
        public var failures: [String: UInt64] = [:]
        /// A few failure messages, for the log.
        public var sampleMessages: [String] = []
        /// Completion latency (connect to the receiver's confirmation), microseconds.
        public var latency = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        /// Open model: latency from when each upload was due, microseconds (coordinated omission
        /// corrected: an upload held up by the cap or the generator still counts its wait).
        public var correctedLatency: Histogram<UInt64>?
        /// Open model: the most an upload started after it was due, and how many started more
        /// than a millisecond late.
        public var maxScheduleLagMicroseconds: UInt64 = 0
        public var lateStarts: UInt64 = 0
        /// Once a second, and at the end: seconds since the start, bytes and uploads done by then.
        public var timeline: [Sample] = []

        public struct Sample: Sendable, Equatable {
            public var seconds: Double
            public var bytes: UInt64
            public var completed: UInt64
            public init(seconds: Double, bytes: UInt64, completed: UInt64) {
                self.seconds = seconds
                self.bytes = bytes
                self.completed = completed
            }
        }
        /// The indices of the uploads the receiver confirmed.
        public var succeeded: [UInt64] = []

        public init() {}

        /// One report of a run split over threads: counts, bytes and histograms added, the
        /// longest time and lag, the confirmed indices together.
        public static func merged(_ parts: [Report]) -> Report {
            var r = Report()
            for p in parts {
                r.completed += p.completed
                r.failed += p.failed
                r.inFlight += p.inFlight
                r.bytes += p.bytes
                r.seconds = max(r.seconds, p.seconds)
                r.failures.merge(p.failures, uniquingKeysWith: +)
                r.sampleMessages += p.sampleMessages.prefix(max(0, 5 - r.sampleMessages.count))
                r.latency.add(p.latency)
                if let c = p.correctedLatency {
                    if r.correctedLatency == nil { r.correctedLatency = c } else { r.correctedLatency!.add(c) }
                }
                r.maxScheduleLagMicroseconds = max(r.maxScheduleLagMicroseconds, p.maxScheduleLagMicroseconds)
                r.lateStarts += p.lateStarts
                r.succeeded += p.succeeded
                // Threads sample on their own clocks, each second: added sample by sample.
                for (i, sample) in p.timeline.enumerated() {
                    if i < r.timeline.count {
                        r.timeline[i].seconds = max(r.timeline[i].seconds, sample.seconds)
                        r.timeline[i].bytes += sample.bytes
                        r.timeline[i].completed += sample.completed
                    } else {
                        r.timeline.append(sample)
                    }
                }
            }
            r.succeeded.sort()
            return r
        }

        /// Counts an upload that ended: its bytes, and its latency or its failure.
        mutating func count(_ upload: any BenchTransfer, bytes: UInt64, failure: (FailureKind, String)?, finishedAt: UInt64) {
            self.bytes += bytes
            if let (kind, message) = failure {
                failed += 1
                failures[kind.rawValue, default: 0] += 1
                if sampleMessages.count < 5 { sampleMessages.append("upload \(upload.index): \(message)") }
            } else {
                completed += 1
                succeeded.append(upload.index)
                let (corrected, uncorrected) = OpenLoadSchedule.latency(dueAt: upload.dueAt, startedAt: upload.startedAt, finishedAt: finishedAt)
                _ = latency.record(uncorrected / 1000)
                _ = correctedLatency?.record(corrected / 1000)
            }
        }

        public var megabytesPerSecond: Double { seconds > 0 ? Double(bytes) / seconds / 1e6 : 0 }
        public var gigabitsPerSecond: Double { seconds > 0 ? Double(bytes) * 8 / seconds / 1e9 : 0 }
        public var uploadsPerSecond: Double { seconds > 0 ? Double(completed) / seconds : 0 }
    }

    public let loop: Loop
    public let options: Options
    public let content: BenchContent
    private var report = Report()
    private var nextIndex: UInt64 = 0
    /// Unchecked: see `InFlightTransfers`.
    @exclusivity(unchecked) private var active = InFlightTransfers()
    private var startedAt: UInt64 = 0
    private var stopping = false
    private var completion: ((Report) -> Void)?
    private var progress: ((Report) -> Void)?
    private var timer: Timer?
    private var address: SocketAddress?
    /// Open model: when each upload is due (see `OpenLoadSchedule`), and the timer that starts them.
    private var schedule: OpenLoadSchedule?
    private var pacer: Timer?
    private var sources: [SocketAddress] = []
    /// Every upload reads into this (one loop thread; each read is handled before the next).
    /// Small: seed framing gets only end of stream, the native protocol a few short frames.
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    /// Seed uploads' sockets (`BenchSeedUpload`), for the run.
    private(set) var clientSockets: ClientSocketGroup?
    /// The last size's decimal digits (the seed framing's prefix): most runs have one size.
    private var lastDigits: (size: UInt64, digits: [UInt8]) = (0, Array("0".utf8))

    /// `size` in decimal digits, in an array with room for `extra` bytes more.
    func digits(of size: UInt64, reserving extra: Int) -> [UInt8] {
        if lastDigits.size != size { lastDigits = (size, Array(String(size).utf8)) }
        var head: [UInt8] = []
        head.reserveCapacity(lastDigits.digits.count + extra)
        head += lastDigits.digits
        return head
    }

    public init(loop: Loop, options: Options) {
        self.loop = loop
        self.options = options
        content = BenchContent(seed: options.seed)
    }

    deinit { readBuffer.deallocate() }

    /// Starts the run; `progress` gets a snapshot every second, `completion` the final report.
    public func run(progress: ((Report) -> Void)? = nil, completion: @escaping (Report) -> Void) throws(UVOperationError) {
        ignoreBrokenPipes()
        let target = try SocketAddress.resolve(options.host, port: options.port, on: loop)
        address = target
        if !target.isIPv6, target.isLoopback, options.sourceAddresses > 1 {
            sources = try (1...min(options.sourceAddresses, 254)).map { (i) throws(UVOperationError) in try SocketAddress(host: "127.0.0.\(i)", port: 0) }
        }
        if options.wireProtocol == .seed { clientSockets = try ClientSocketGroup(loop: loop) }
        self.completion = completion
        self.progress = progress
        startedAt = monotonicNanoseconds()
        let t = try Timer(loop: loop)
        timer = t
        try t.start(timeout: 1000, repeat: 1000) { [unowned self] in tick() }
        if let rate = options.rate {
            schedule = OpenLoadSchedule(rate: rate, start: startedAt + UInt64(options.scheduleOffset * 1e9))
            report.correctedLatency = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
            // libuv's timers tick in milliseconds: each tick starts every upload due by then.
            let p = try Timer(loop: loop)
            pacer = p
            try p.start(timeout: 1, repeat: 1) { [unowned self] in fill() }
        }
        fill()
        finishIfDone()
    }

    /// Stops starting uploads (those in flight finish).
    public func stop() { stopping = true; finishIfDone() }

    /// A snapshot of the run so far.
    public var snapshot: Report {
        var r = report
        r.inFlight = active.count
        r.seconds = Double(monotonicNanoseconds() - startedAt) / 1e9
        return r
    }

    private var mayStartMore: Bool {
        if stopping { return false }
        if let n = options.uploads, nextIndex >= n { return false }
        if let d = options.duration, Double(monotonicNanoseconds() - startedAt) / 1e9 >= d { return false }
        return true
    }

    private func fill() {
        // Only the open model needs the time here: a closed run reads the clock per upload
        // only for its latency.
        let now = schedule == nil ? 0 : monotonicNanoseconds()
        var due = schedule?.dueCount(now: now) ?? .max
        while due > 0, active.count < options.concurrency, mayStartMore, let address {
            due -= 1
            let index = options.indexOffset + options.indexStride * nextIndex
            nextIndex += 1
            let dueAt = schedule?.startNext(now: now).dueAt
            let size = options.sizes.size(of: index, seed: options.seed)
            let source = sources.isEmpty ? nil : sources[Int(index % UInt64(sources.count))]
            switch options.wireProtocol {
            case .seed:
                let upload = BenchSeedUpload(generator: self, index: index, size: size)
                upload.dueAt = dueAt ?? upload.startedAt
                active.add(upload)
                upload.start(clientSockets!, to: address, from: source)
            case .native, .httpPut, .webSocket:
                let upload = BenchUpload(generator: self, index: index, size: size)
                upload.dueAt = dueAt ?? upload.startedAt
                active.add(upload)
                upload.start(address, from: source)
            case .udpNative, .udpSeed:
                let upload = BenchUDPUpload(generator: self, index: index, size: size)
                upload.dueAt = dueAt ?? upload.startedAt
                active.add(upload)
                upload.start()
            }
        }
        if !mayStartMore, let p = pacer {
            p.close()
            pacer = nil
        }
    }

    private func tick() {
        if !mayStartMore { stopping = true }
        let limit = UInt64(options.stallTimeout * 1e9)
        let now = monotonicNanoseconds()
        for upload in active.all {  // a copy: failing one removes it from `active`
            let last = upload.lastProgress  // may be later than `now` (a UDP upload samples it here)
            guard now > last, now - last > limit else { continue }
            upload.fail(.timeout, "no progress for \(options.stallTimeout) s")
        }
        let s = snapshot
        report.timeline.append(.init(seconds: s.seconds, bytes: s.bytes, completed: s.completed))
        progress?(s)
        finishIfDone()
    }

    func uploadEnded(_ upload: any BenchTransfer, bytes: UInt64, failure: (FailureKind, String)?) {
        active.remove(upload)
        report.count(upload, bytes: bytes, failure: failure, finishedAt: monotonicNanoseconds())
        fill()
        finishIfDone()
    }

    private func finishIfDone() {
        guard active.isEmpty, !mayStartMore || stopping, let completion else { return }
        self.completion = nil
        var final = snapshot
        final.timeline.append(.init(seconds: final.seconds, bytes: final.bytes, completed: final.completed))
        final.succeeded.sort()
        if let schedule {
            final.maxScheduleLagMicroseconds = schedule.maxLag / 1000
            final.lateStarts = schedule.lateStarts
        }
        timer?.close()
        timer = nil
        pacer?.close()
        pacer = nil
        clientSockets?.close()
        clientSockets = nil
        completion(final)
    }
}

/// One upload of a bench run, as the generator tracks it.
protocol BenchTransfer: AnyObject {
    var index: UInt64 { get }
    /// Where the generator keeps it among the uploads in flight (-1 once ended).
    var activeSlot: Int { get set }
    var startedAt: UInt64 { get }
    /// When it was due (open model), else when it started.
    var dueAt: UInt64 { get }
    /// When the upload last moved (monotonic nanoseconds).
    var lastProgress: UInt64 { get }
    /// Gives up on the upload (the generator's stall timeout).
    func fail(_ kind: LoadGenerator.FailureKind, _ message: String)
}

/// One upload of a bench run on its own connection in the native protocol, HTTP or WebSocket
/// (seed framing is `BenchSeedUpload`'s): writes the derived bytes (two writes in flight at
/// most, straight from the shared pattern) and waits for the receiver's confirmation (RESULT,
/// the HTTP answer, `stored`). Owned by its generator.
final class BenchUpload: TCPStreamReader, BenchTransfer {
    unowned let generator: LoadGenerator
    let index: UInt64
    var activeSlot = -1
    let size: UInt64
    let startedAt = monotonicNanoseconds()
    var dueAt: UInt64 = 0
    /// The kernel took a byte of it, or the receiver sent one: the connection was made.
    private var connected = false
    /// When the upload last moved: connected, had bytes taken, or got an answer.
    private(set) var lastProgress = monotonicNanoseconds()
    private var stream: TCPStream?
    private var offset: UInt64 = 0
    private var writesInFlight = 0
    private var sent: UInt64 = 0
    private var phase: Phase = .connecting
    /// HTTP: the first bytes of the answer (its status line). WebSocket: what the receiver sent,
    /// read up to `frameAt`.
    private var answer: [UInt8] = []
    private var frameAt: Int?
    /// The native protocol's decisions (unused by HTTP and WebSocket uploads).
    private var client: NativeClientMachine
    private var digester: Digester?
    private var ended = false

    /// What the upload itself is doing; while it waits on the receiver (native), what for is
    /// the machine's business.
    private enum Phase { case connecting, awaitingServer, streaming, awaitingClose }

    init(generator: LoadGenerator, index: UInt64, size: UInt64) {
        self.generator = generator
        self.index = index
        self.size = size
        // Upload ids are fresh per run, so a receiver never holds part of one.
        client = NativeClientMachine(token: generator.options.token, resumeAllowed: false)
    }

    private var options: LoadGenerator.Options { generator.options }

    /// Connects without waiting for the handshake (`TCPStream.connectNow`): the first bytes are
    /// written at once and go out as soon as the kernel allows, which saves the system calls of
    /// a connect callback. A connection that fails shows as the first write's or read's error,
    /// and counts as `connect` while nothing has been written.
    func start(_ address: SocketAddress, from source: SocketAddress?) {
        do {
            // Every protocol writes at once, so the handshake's ACK rides on the first bytes.
            let s = try TCPStream.connectNow(loop: generator.loop, to: address, from: source, segments: [.ackWithFirstBytes])
            stream = s
            try s.startReading(self)
        } catch {
            end(.connect, "\(error)")
            return
        }
        begin()
    }

    private func begin() {
        switch options.wireProtocol {
        case .native:
            phase = .awaitingServer
            perform(client.connected())
        case .httpPut:
            phase = .streaming
            let head = "PUT /bench-\(options.seed)-\(index).bin HTTP/1.1\r\nHost: \(options.host)\r\nContent-Length: \(size)\r\nConnection: close\r\n\r\n"
            pump(prefix: Array(head.utf8))
        case .webSocket:
            phase = .awaitingServer
            let handshake = "GET /ws HTTP/1.1\r\nHost: \(options.host)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ZGF0YXN0cmVhbWJlbmNoIQ==\r\n\r\n"
            // `begin` waits for `hello`, as the page does (a receiver may drop a message sent
            // with the handshake, before it listens to the socket: Vapor does).
            write(Array(handshake.utf8))
        case .seed, .udpNative, .udpSeed:
            preconditionFailure("seed and UDP uploads have their own classes")
        }
    }

    private var beginMessage: [UInt8] {
        WebSocketClientFrames.text(#"{"type":"begin","name":"bench-\#(options.seed)-\#(index).bin","size":\#(size)}"#)
    }

    /// Reads the receiver's WebSocket messages: `hello` (answered with the token's proof and
    /// `begin`), `ready` (the bytes go), `stored` (done), `error` or a close (failed).
    private func readWebSocket(_ bytes: UnsafeMutableRawBufferPointer.SubSequence) {
        answer += bytes
        if frameAt == nil {
            guard let headEnd = answer.firstRange(of: [13, 10, 13, 10]) else { return }
            guard answer.starts(with: Array("HTTP/1.1 101 ".utf8)) else {
                end(.protocolError, "answered \(String(decoding: answer.prefix(12), as: UTF8.self))")
                return
            }
            frameAt = headEnd.upperBound
        }
        while !ended, let at = frameAt, let frame = WebSocketClientFrames.serverFrame(in: answer, at: at) {
            frameAt = frame.next
            let message = String(decoding: answer[frame.payload], as: UTF8.self)
            guard frame.opcode == WebSocketClientFrames.text else {
                if frame.opcode == WebSocketClientFrames.close { end(.closedEarly, "the receiver closed the WebSocket") }
                continue
            }
            if message.contains(#""type":"hello""#), options.token == nil {
                write(beginMessage)
            } else if message.contains(#""type":"hello""#), let token = options.token {
                guard let start = message.firstRange(of: #""nonce":""#)?.upperBound,
                      let nonce = [UInt8](hex: String(message[start...].prefix(64))) else {
                    end(.protocolError, "a hello without a nonce")
                    return
                }
                let mac = Authentication.response(token: token, nonce: nonce).hexString
                write(WebSocketClientFrames.text(#"{"type":"auth","mac":"\#(mac)"}"#) + beginMessage)
            } else if message.contains(#""type":"ready""#), phase == .awaitingServer {
                phase = .streaming
                pump()
            } else if message.contains(#""type":"stored""#) {
                end(nil, "")
            } else if message.contains(#""type":"error""#) {
                end(.protocolError, message)
            }
        }
    }

    private func write(_ bytes: [UInt8]) {
        do { try stream?.write(bytes) } catch { end(.connection, error.description) }
    }

    /// Keeps two writes of file bytes in flight until all are written. `prefix` (the HTTP
    /// request head) goes out in the same write as the upload's first bytes, and the 16-byte
    /// content header with the first window: a small upload is one `writev`. What the kernel
    /// takes at once is done at once.
    private func pump(prefix: [UInt8] = []) {
        guard phase == .streaming, let stream else { return }
        var prefix = prefix
        var framing = prefix.count  // not file bytes: not counted as sent
        while writesInFlight < 2, offset < size || !prefix.isEmpty {
            if offset < UInt64(BenchContent.headerLength), offset < size {
                let header = generator.content.header(of: index)
                let n = Int(min(UInt64(BenchContent.headerLength), size))
                header[0..<n].withUnsafeBytes { digester?.update($0) }
                prefix += header[0..<n]
                offset += UInt64(n)
            }
            let slice = offset < size
                ? generator.content.window(of: index, offset: offset, count: Int(min(size - offset, UInt64(options.writeSize))))
                : UnsafeRawBufferPointer(start: nil, count: 0)
            digester?.update(slice)
            offset += UInt64(slice.count)
            if options.wireProtocol == .webSocket {
                let head = WebSocketClientFrames.head(opcode: WebSocketClientFrames.binary, length: prefix.count + slice.count)
                prefix = head + prefix
                framing += head.count
            }
            let n = prefix.count + slice.count - framing
            framing = 0
            do {
                // What the kernel takes now is done now; only the rest waits for a callback.
                let taken = writesInFlight > 0 ? 0 : try prefix.withUnsafeBytes { try stream.tryWrite($0, slice) }
                if taken == prefix.count + slice.count {
                    connected = true
                    lastProgress = monotonicNanoseconds()
                    sent += UInt64(n)
                } else {
                    writesInFlight += 1
                    let rest = UnsafeRawBufferPointer(rebasing: slice[max(0, taken - prefix.count)...])
                    if taken >= prefix.count {
                        try stream.write(unsafeBytes: rest) { [self] e in wrote(n, e) }
                    } else {
                        try stream.write(copying: prefix[taken...], then: rest) { [self] e in wrote(n, e) }
                    }
                }
            } catch {
                end(.connection, "\(error)")
                return
            }
            prefix = []
        }
        if offset == size, writesInFlight == 0 { streamed() }
    }

    private func wrote(_ n: Int, _ error: UVOperationError?) {
        writesInFlight -= 1
        if let error { end(.connection, error.description); return }
        connected = true
        lastProgress = monotonicNanoseconds()
        sent += UInt64(n)
        pump()
    }

    private func streamed() {
        switch options.wireProtocol {
        case .native:
            phase = .awaitingServer
            perform(client.streamed(digest: digester!.finish()))
        case .httpPut:
            phase = .awaitingClose  // the answer, then the receiver's close
        case .webSocket:
            phase = .awaitingClose  // `stored`
        case .seed, .udpNative, .udpSeed:
            preconditionFailure("seed and UDP uploads have their own classes")
        }
    }

    // MARK: - Reading

    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? { generator.readBuffer }

    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data(let count):
            lastProgress = monotonicNanoseconds()
            connected = true
            if options.wireProtocol == .httpPut {
                if answer.count < 12 { answer += generator.readBuffer[0..<min(count, 12 - answer.count)] }
                return
            }
            if options.wireProtocol == .webSocket {
                readWebSocket(generator.readBuffer[0..<count])
                return
            }
            var at = 0
            while at < count, !ended {
                let (taken, action) = client.bytesReceived(UnsafeRawBufferPointer(rebasing: generator.readBuffer[at..<count]))
                at += taken
                perform(action)
            }
        case .endOfStream:
            if options.wireProtocol == .httpPut {
                // "HTTP/1.1 2xx": stored (201 new, 204 replaced on a WebDAV server).
                let status = String(decoding: answer, as: UTF8.self)
                if phase == .awaitingClose || offset == size, status.hasPrefix("HTTP/1.1 2") || status.hasPrefix("HTTP/1.0 2") {
                    end(nil, "")
                } else {
                    end(answer.isEmpty ? .closedEarly : .protocolError, answer.isEmpty ? "the receiver closed the connection" : "answered \(status)")
                }
            } else if phase == .awaitingClose {
                end(nil, "")
            } else {
                end(.closedEarly, "the receiver closed the connection")
            }
        case .failed(let e):
            end(.connection, "read failed: \(e)")
        case .noBuffer:
            end(.connection, "no read buffer")
        }
    }

    private func perform(_ action: NativeClientMachine.Action) {
        switch action {
        case .none:
            break
        case .send(let bytes):
            write(bytes)
        case .announceNextFile:
            digester = Digester(.xxh3_128)
            let header = FileHeader(uploadID: generator.uploadID(of: index), size: size, digest: .xxh3_128, name: "bench-\(options.seed)-\(index).bin")
            perform(client.announce(header))
        case .stream:
            phase = .streaming
            pump()
        case .finished(let r):
            guard r.status == .stored else { end(.rejected, "RESULT \(r.status): \(r.message)"); return }
            // One file per connection: closing after RESULT ends the conversation cleanly.
            phase = .awaitingClose
            end(nil, "")
        case .fail(.protocolViolation(let detail)):
            end(.protocolError, detail)
        case .fail(let failure):
            end(.rejected, failure.description)
        }
    }

    /// Gives up on the upload (the generator's stall timeout).
    func fail(_ kind: LoadGenerator.FailureKind, _ message: String) { end(kind, message) }

    private func end(_ failure: LoadGenerator.FailureKind?, _ message: String) {
        guard !ended else { return }
        ended = true
        // Before the kernel took a byte or the receiver said one, the connection was never made.
        let failure = (failure == .connection || failure == .closedEarly) && !connected ? .connect : failure
        if let stream {
            stream.stopReading()
            stream.close()
            self.stream = nil
        }
        generator.uploadEnded(self, bytes: sent, failure: failure.map { ($0, message) })
    }
}

extension LoadGenerator {
    /// Upload `index`'s id for the native protocols: its content header ("DSB1", seed, index)
    /// with the time the run started mixed in, so two runs with one seed never resume each other.
    func uploadID(of index: UInt64) -> UploadID {
        var id = content.header(of: index)
        id = Array(id.prefix(Wire.uploadIDLength))
        while id.count < Wire.uploadIDLength { id.append(0) }
        for k in 0..<8 { id[k] ^= UInt8(truncatingIfNeeded: startedAt >> (8 * UInt64(k))) }
        return UploadID(bytes: id)
    }
}

/// One upload of a bench run over UDP: a `UDPSender` of its own (socket, pacing timer) sending
/// the derived bytes natively or with the seed's UDP framing. Owned by its generator.
final class BenchUDPUpload: BenchTransfer {
    unowned let generator: LoadGenerator
    let index: UInt64
    var activeSlot = -1
    let size: UInt64
    let startedAt = monotonicNanoseconds()
    var dueAt: UInt64 = 0
    private var sender: UDPSender?
    private var ended = false
    private var lastSent: UInt64 = 0
    private var lastMoved = monotonicNanoseconds()

    init(generator: LoadGenerator, index: UInt64, size: UInt64) {
        self.generator = generator
        self.index = index
        self.size = size
    }

    /// Bytes the sender has sent so far moving counts as progress.
    var lastProgress: UInt64 {
        if let sender, sender.totalSent != lastSent {
            lastSent = sender.totalSent
            lastMoved = monotonicNanoseconds()
        }
        return lastMoved
    }

    func start() {
        let o = generator.options
        var options = UDPSender.Options(host: o.host, port: o.port)
        options.token = o.token
        options.seedProtocol = o.wireProtocol == .udpSeed
        options.seedPause = 0  // as fast as the socket takes them (the seed client sleeps 1 ms)
        options.silenceTimeout = o.stallTimeout
        let sender = UDPSender(loop: generator.loop, options: options)
        self.sender = sender
        sender.send(sources: [.bench(generator.content, index: index, size: size, uploadID: generator.uploadID(of: index))]) { [self] outcomes in
            let outcome = outcomes.first
            let sent = sender.totalSent
            self.sender = nil
            if outcome?.succeeded == true {
                end(nil, "", sent: sent)
            } else {
                let message = outcome?.message ?? "failed"
                let kind: LoadGenerator.FailureKind = message.contains("refused") ? .rejected : (message.contains("no answer") || message.contains("stopped answering") ? .timeout : .connection)
                end(kind, message, sent: sent)
            }
        }
    }

    func fail(_ kind: LoadGenerator.FailureKind, _ message: String) {
        guard let sender else { return }
        let sent = sender.totalSent
        self.sender = nil
        sender.cancel(reason: message)
        end(kind, message, sent: sent)
    }

    private func end(_ failure: LoadGenerator.FailureKind?, _ message: String, sent: UInt64) {
        guard !ended else { return }
        ended = true
        generator.uploadEnded(self, bytes: min(sent, size), failure: failure.map { ($0, message) })
    }
}
