import DataStream
import DataStreamCore
import Dispatch
import Foundation
import Glibc
import Logging
import UV

/// A DataStream server on its own loop in a background thread, on 127.0.0.1 and an ephemeral
/// port, writing into a fresh temporary directory. `stop()` stops it through an async wakeup
/// and waits until its loop has closed cleanly.
final class BackgroundServer: @unchecked Sendable {
    let directory: String
    private(set) var port = 0
    private var wakeup: AsyncWakeup?
    /// Runs `pendingQuery` on the loop thread (`onLoop`).
    private var queryWakeup: AsyncWakeup?
    private var pendingQuery: ((Server) -> Void)?
    private let queryLock = NSLock()
    private let pendingLock = NSLock()
    private let queryDone = DispatchSemaphore(value: 0)
    private let ready = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private(set) var statistics = Server.Statistics()
    private(set) var loopClosedCleanly = false
    /// Every line the server logged at warning level or above.
    let log = LogRecorder()

    /// Runs on the loop thread before `start` (an embedder's hooks: `onEvent`).
    private let prepare: (Server) -> Void
    /// The server gets only the pointer of a loop this object owns, as an embedding program
    /// lends its own (otherwise the server's `Loop` is the owner).
    private let borrowedLoop: Bool

    init(directory: String? = nil, borrowedLoop: Bool = false, configure: (inout Server.Configuration) -> Void = { _ in },
         prepare: @escaping (Server) -> Void = { _ in }) throws {
        self.directory = directory ?? BackgroundServer.temporaryDirectory()
        self.prepare = prepare
        self.borrowedLoop = borrowedLoop
        var configuration = Server.Configuration()
        configuration.port = 0
        configuration.directory = self.directory
        configure(&configuration)
        let config = configuration
        let thread = Thread { [self] in run(config) }
        thread.start()
        ready.wait()
        guard port != 0 else { throw TestError("server did not start") }
    }

    static func temporaryDirectory() -> String {
        _ = removeEndedRunsDirectories
        let path = "/tmp/datastream-tests-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        mkdir(path, 0o755)
        return path
    }

    /// The directories of earlier test runs (their process is gone) go, once per run: each run
    /// writes hundreds of MiB of uploads.
    private static let removeEndedRunsDirectories: Void = {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [] where name.hasPrefix("datastream-tests-") {
            guard let pid = Int32(name.dropFirst("datastream-tests-".count).prefix { $0 != "-" }), pid != getpid(),
                  kill(pid, 0) != 0, errno == ESRCH else { continue }
            try? FileManager.default.removeItem(atPath: "/tmp/" + name)
        }
    }()

    private func run(_ configuration: Server.Configuration) {
        if borrowedLoop {
            // The test owns the uv_loop_t (`host`); the server gets only its pointer.
            guard let host = try? Loop() else { ready.signal(); done.signal(); return }
            run(configuration, on: Loop(borrowing: host.rawPointer))
            loopClosedCleanly = (try? host.close()) != nil
        } else if let loop = try? Loop() {
            run(configuration, on: loop)
            loopClosedCleanly = (try? loop.close()) != nil
        } else {
            ready.signal()
        }
        done.signal()
    }

    private func run(_ configuration: Server.Configuration, on loop: Loop) {
        let recorder = log
        let logger = Logger(label: "datastream") { _ in recorder.handler }
        guard let server = try? Server(loop: loop, configuration: configuration, logger: logger) else { ready.signal(); return }
        prepare(server)
        guard let address = try? server.start() else { ready.signal(); return }
        port = address.port
        queryWakeup = try? AsyncWakeup(loop: loop) { [self] in
            // Taken under the lock: the test thread set it (uv_async_send orders nothing TSan sees).
            let query = pendingLock.withLock { () -> ((Server) -> Void)? in
                defer { pendingQuery = nil }
                return pendingQuery
            }
            guard let query else { return }
            query(server)
            queryDone.signal()
        }
        queryWakeup?.unref()
        wakeup = try? AsyncWakeup(loop: loop) { [self] in
            queryWakeup?.close()
            server.stop { [self] in wakeup?.close() }
        }
        ready.signal()
        loop.run()
        statistics = server.statistics
    }

    func stop() {
        wakeup?.send()
        done.wait()
    }

    /// Runs `body` with the server on its loop thread and returns what it returns: how a test
    /// reads the live server's state (statistics, connections) while it runs.
    func onLoop<T>(_ body: @escaping (Server) -> T) -> T {
        queryLock.lock()
        defer { queryLock.unlock() }
        var result: T?
        pendingLock.withLock { pendingQuery = { result = body($0) } }
        queryWakeup?.send()
        queryDone.wait()
        return result!
    }

    /// Whether the server has read everything `client` sent so far (nothing of it waits in the
    /// kernel: /proc/net/tcp), which is how a test knows the server has seen it.
    func hasRead(_ client: BlockingClient) -> Bool {
        kernelQueuedBytes(serverPort: port, clientPort: client.localPort) == 0
    }

    /// Resumes the native upload `header` of `data` the way a client retries: announce it, send
    /// the rest from the offset the server holds, END, RESULT; again while the id is still busy
    /// (the server may still be closing the broken connection's partial). Nil if no attempt
    /// got through in time.
    func resume(_ header: FileHeader, _ data: [UInt8]) -> (offset: UInt64, status: Wire.ResultStatus?)? {
        var outcome: (offset: UInt64, status: Wire.ResultStatus?)?
        _ = eventually {
            guard let c = try? BlockingClient(port: port), (try? c.handshake()) != nil,
                  let o = try? c.announce(header) else { return false }
            c.send(Array(data[Int(o)...]))
            c.send(Wire.end(digest: Digests.compute(header.digest, data)))
            outcome = (o, (try? c.result())?.status)
            return true
        }
        return outcome
    }

    /// Waits (bounded) until `condition` holds of the running server's statistics.
    func waitForStatistics(_ seconds: Double = 10, _ condition: @escaping (Server.Statistics) -> Bool) -> Bool {
        waitUntil(seconds) { onLoop { condition($0.statistics) } }
    }

    /// Names of the stored files (not the hidden state folder).
    func storedFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0 != ".datastream" }.sorted()
    }

    /// Files of partial uploads (data, metadata, seed partials): not the receipts of stored uploads.
    func partials() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/.datastream/partial")) ?? []).filter { !$0.hasSuffix(".done") }.sorted()
    }

    /// Receipts of stored native uploads (`ID.done`).
    func receipts() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/.datastream/partial")) ?? []).filter { $0.hasSuffix(".done") }.sorted()
    }

    func contents(_ name: String) -> [UInt8]? {
        FileManager.default.contents(atPath: directory + "/" + name).map { [UInt8]($0) }
    }

    /// Waits (bounded) until `condition` holds.
    func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        waitUntil(seconds, condition)
    }
}

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Deterministic bytes for upload `index` (xorshift64, eight bytes per step).
func content(_ index: Int, count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var x = seed &+ UInt64(index) &* 0x2545_F491_4F6C_DD1D | 1
    return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialised in
        var i = 0
        while i < count {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            withUnsafeBytes(of: x.littleEndian) { word in
                for b in word where i < count {
                    buffer[i] = b
                    i += 1
                }
            }
        }
        initialised = count
    }
}

/// A blocking TCP client on 127.0.0.1, as simple as the seed's own (receive timeout 15 s).
final class BlockingClient {
    let fd: Int32

    /// Connects to 127.0.0.1:`port`, from `source` (another loopback address) when given.
    init(port: Int, source: String? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard bound == 0 else { throw TestError("bind to \(source): \(String(cString: strerror(errno)))") }
        }
        try connectLoopback(fd, port: port)
    }

    deinit { Glibc.close(fd) }

    /// The client's own port.
    var localPort: Int {
        var addr = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Makes the close (when this client goes away) abortive: SO_LINGER 0, so the peer gets a
    /// reset instead of an end of stream.
    func resetOnClose() {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    func send(_ bytes: [UInt8], chunk: Int = 1 << 20) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset..<min(bytes.count, offset + chunk)].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Reads until the server closes; nil on timeout.
    func readUntilEOF() -> [UInt8]? {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { return out }
            if n < 0 { return errno == ECONNRESET ? out : nil }
            out += buffer[0..<n]
        }
    }

    func readExactly(_ count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: count)
        while out.count < count {
            let n = recv(fd, &buffer, count - out.count, 0)
            if n <= 0 { return nil }
            out += buffer[0..<n]
        }
        return out
    }

    /// Reads one native frame.
    func readFrame() -> (type: Wire.FrameType?, payload: ArraySlice<UInt8>)? {
        guard let header = readExactly(5) else { return nil }
        let length = Int(header[1]) << 24 | Int(header[2]) << 16 | Int(header[3]) << 8 | Int(header[4])
        guard let payload = length == 0 ? [] : readExactly(length) else { return nil }
        return (Wire.FrameType(rawValue: header[0]), payload[...])
    }

    /// HELLO, WELCOME and (with a token) AUTH, AUTH_OK.
    func handshake(token: String? = nil) throws {
        send(Wire.hello())
        guard let (type, payload) = readFrame(), type == .welcome else { throw TestError("no WELCOME") }
        let (_, nonce) = try Wire.decodeWelcome(payload)
        if let nonce {
            send(Wire.auth(mac: Authentication.response(token: token ?? "", nonce: nonce)))
            guard let (t, _) = readFrame(), t == .authOK else { throw TestError("no AUTH_OK") }
        }
    }

    /// Sends FILE and returns READY's offset.
    func announce(_ header: FileHeader) throws -> UInt64 {
        send(Wire.file(header))
        guard let (type, payload) = readFrame() else { throw TestError("no answer to FILE") }
        if type == .result { throw TestError("refused: \(try Wire.decodeResult(payload).message)") }
        guard type == .ready else { throw TestError("expected READY, got \(String(describing: type))") }
        return try Wire.decodeReady(payload).1
    }

    func result() throws -> UploadResult {
        guard let (type, payload) = readFrame(), type == .result else { throw TestError("no RESULT") }
        return try Wire.decodeResult(payload)
    }
}

/// Runs senders on a client loop in the calling thread until they finish.
func sendFiles(_ paths: [String], port: Int, token: String? = nil, seed: Bool = false) throws -> [Sender.Outcome] {
    let loop = try Loop()
    var options = Sender.Options(host: "127.0.0.1", port: port)
    options.token = token
    options.seedProtocol = seed
    let sender = Sender(loop: loop, options: options)
    var outcomes: [Sender.Outcome] = []
    sender.send(paths) { outcomes = $0 }
    loop.run()
    try loop.close()
    return outcomes
}

func writeTemporaryFile(_ bytes: [UInt8], name: String) -> String {
    let dir = BackgroundServer.temporaryDirectory()
    let path = dir + "/" + name
    precondition(FileManager.default.createFile(atPath: path, contents: Data(bytes)), "cannot write \(path)")
    return path
}

func xxh3(_ bytes: [UInt8]) -> [UInt8] {
    Digests.compute(.xxh3_128, bytes)
}

// MARK: - Loopback sockets

/// 127.0.0.1:`port` (0: any free port).
func loopbackAddress(port: Int = 0) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    return addr
}

/// Connects `fd` to 127.0.0.1:`port`; throws with the reason if it cannot.
func connectLoopback(_ fd: Int32, port: Int) throws {
    var addr = loopbackAddress(port: port)
    let r = withUnsafePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard r == 0 else { throw TestError("connect: \(String(cString: strerror(errno)))") }
}

/// A socket of `type` bound to 127.0.0.1 on a free port, and that port. The caller closes `fd`.
func boundLoopbackSocket(_ type: __socket_type) -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(type.rawValue), 0)
    var addr = loopbackAddress()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &addr) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}

/// Keeps the messages the server logs at warning level and above, for a test to read; the
/// server logs on its own thread while the test reads, so access is locked.
final class LogRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [String] = []

    func append(_ line: String) { lock.withLock { recorded.append(line) } }
    var lines: [String] { lock.withLock { recorded } }

    /// A swift-log handler writing into this recorder (a value, like every log handler).
    var handler: Handler { Handler(recorder: self) }

    struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .warning

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            recorder.append("\(event.level) \(event.message)")
        }
    }
}

/// The upload WebSocket at `/ws`, spoken by hand over a `BlockingClient`.
extension BlockingClient {
    /// The handshake; then the server's first message (`hello`), or nil if it did not switch.
    func openWebSocket() -> String? {
        send(Array("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".utf8))
        var head: [UInt8] = []
        while head.suffix(4) != [13, 10, 13, 10] {
            guard let b = readExactly(1) else { return nil }
            head += b
        }
        guard String(decoding: head, as: UTF8.self).hasPrefix("HTTP/1.1 101 ") else { return nil }
        return readWebSocketText()
    }

    /// Sends one masked client frame.
    func sendWebSocketFrame(_ opcode: UInt8, _ payload: [UInt8]) {
        var frame: [UInt8] = [0x80 | opcode]
        if payload.count < 126 { frame.append(0x80 | UInt8(payload.count)) } else if payload.count <= 0xffff {
            frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
        } else {
            frame.append(0x80 | 127)
            for shift in stride(from: 56, through: 0, by: -8) { frame.append(UInt8((payload.count >> shift) & 0xff)) }
        }
        let mask: [UInt8] = [0x5a, 0x01, 0xc3, 0x77]
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        send(frame)
    }

    /// The next server frame's payload if it is text (nil for anything else).
    func readWebSocketText() -> String? {
        guard let h = readExactly(2) else { return nil }
        var n = Int(h[1] & 0x7f)
        if n == 126, let e = readExactly(2) { n = Int(e[0]) << 8 | Int(e[1]) } else if n == 127, let e = readExactly(8) {
            n = e.reduce(0) { $0 << 8 | Int($1) }
        }
        guard let payload = readExactly(n), h[0] & 0x0f == 1 else { return nil }
        return String(decoding: payload, as: UTF8.self)
    }

    /// One upload over the open socket: begin, ready, the bytes, stored; the last message.
    func uploadOverWebSocket(_ bytes: [UInt8], name: String) -> String? {
        sendWebSocketFrame(1, Array(#"{"type":"begin","name":"\#(name)","size":\#(bytes.count)}"#.utf8))
        guard let ready = readWebSocketText(), ready.contains(#""type":"ready""#) else { return nil }
        sendWebSocketFrame(2, bytes)
        return readWebSocketText()
    }
}
