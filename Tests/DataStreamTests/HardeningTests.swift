import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing
import UV
import UV

/// Limits, timeouts and security defaults of the TCP receiver, on real sockets.
struct TimeoutTests {
    /// No upload begins: the connection is closed at the header timeout (native clients are told why).
    @Test func headerTimeoutClosesSilentAndSlowHeaders() throws {
        let server = try BackgroundServer { $0.headerTimeout = 0.4; $0.idleTimeout = 30 }
        // Seed: digits only, never the first data byte.
        let seed = try BlockingClient(port: server.port)
        seed.send(Array("12".utf8))
        // Native: HELLO, then nothing.
        let native = try BlockingClient(port: server.port)
        native.send(Wire.hello())
        #expect(native.readFrame()?.type == .welcome)
        let frame = native.readFrame()
        #expect(frame?.type == .error)
        #expect(frame.map { Wire.decodeError($0.payload).code } == ProtocolError.headerTimeout(seconds: 0.4).code)
        #expect(native.readUntilEOF() != nil)
        #expect(seed.readUntilEOF() != nil)
        server.stop()
        #expect(server.statistics.connectionsTimedOut == 2)
        #expect(server.storedFiles().isEmpty && server.partials().isEmpty)
    }

    /// A client that goes quiet mid-file is closed at the idle timeout: its seed partial is
    /// deleted, a native partial stays resumable.
    @Test func idleTimeoutEvictsStalledUploads() throws {
        let server = try BackgroundServer { $0.idleTimeout = 0.5 }
        let seed = try BlockingClient(port: server.port)
        seed.send(Array("1000".utf8) + content(70, count: 300))
        let data = content(71, count: 200_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "stalled.bin")
        let native = try BlockingClient(port: server.port)
        try native.handshake()
        #expect(try native.announce(header) == 0)
        native.send(Array(data[0..<50_000]))
        let frame = native.readFrame()
        #expect(frame?.type == .error)
        #expect(frame.map { Wire.decodeError($0.payload).code } == ProtocolError.idleTimeout(seconds: 0.5).code)
        #expect(seed.readUntilEOF() != nil)
        // The native partial resumes where it stopped.
        #expect(server.eventually {
            guard let again = try? BlockingClient(port: server.port), (try? again.handshake()) != nil,
                  let offset = try? again.announce(header), offset == 50_000 else { return false }
            again.send(Array(data[50_000...]))
            again.send(Wire.end(digest: Digests.compute(.xxh3_128, data)))
            return (try? again.result())?.status == .stored
        })
        server.stop()
        #expect(server.statistics.connectionsTimedOut == 2)
        #expect(server.contents("stalled.bin") == data)
        #expect(server.storedFiles() == ["stalled.bin"])
    }

    /// Slow but alive: an upload sent a byte at a time for longer than the idle timeout
    /// finishes. "Longer" is an event, not a pause: a silent connection opened beside it times
    /// out meanwhile; each byte is sent once the server has read the one before.
    /// A client that slows to a trickle while its upload is drained from the socket (the drain
    /// is woken only once 512 KiB wait) is not taken for silent: the bytes waiting in the
    /// socket count as the client sending, and the upload outlives several idle timeouts.
    @Test func aSlowClientOfADrainedUploadIsNotIdle() throws {
        let server = try BackgroundServer { $0.idleTimeout = 2; $0.headerTimeout = 0.5 }
        defer { server.stop() }
        let data = content(93, count: 4 << 20)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "trickle.bin")
        let client = try BlockingClient(port: server.port)
        try client.handshake()
        #expect(try client.announce(header) == 0)
        client.send(Array(data.prefix(1 << 20)))
        #expect(server.waitForStatistics { $0.uploadsDrained == 1 })
        var sent = 1 << 20
        // Eight silent connections closed by the header timeout, one after another, mark the
        // time (about four seconds: two idle timeouts); the client sends 4 KiB after each.
        for _ in 0..<8 {
            let clock = try BlockingClient(port: server.port)
            #expect(clock.readUntilEOF() != nil)
            client.send(Array(data[sent..<(sent + 4096)]))
            sent += 4096
        }
        client.send(Array(data[sent...]))
        client.send(Wire.end(digest: Digests.compute(.sha256, data)))
        #expect(try client.result().status == .stored)
        #expect(server.contents("trickle.bin") == data)
    }

    @Test func slowButAliveUploadsFinish() throws {
        let server = try BackgroundServer { $0.idleTimeout = 0.5; $0.headerTimeout = 0.5 }
        let data = content(73, count: 100_000)
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8) + [data[0]])
        let silent = try BlockingClient(port: server.port)
        var sent = 1
        while sent < data.count - 1, server.onLoop({ $0.statistics.connectionsTimedOut }) == 0 {
            #expect(waitUntil { server.hasRead(client) })
            client.send([data[sent]])
            sent += 1
        }
        #expect(sent < data.count - 1, "the silent connection outlived \(sent) bytes sent one at a time")
        #expect(silent.readUntilEOF() != nil)
        client.send(Array(data[sent...]))
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().count == 1 })
        server.stop()
        #expect(server.statistics.connectionsTimedOut == 1)  // the silent one only
        #expect(server.contents(server.storedFiles()[0]) == data)
    }
}

struct ConnectionLimitTests {
    /// At the cap the server stops accepting; the next connection waits in the backlog and is
    /// served as soon as one closes.
    @Test func maxConnectionsPausesAcceptingAndResumes() throws {
        let server = try BackgroundServer { $0.maxConnections = 2 }
        var idle: [BlockingClient] = [try BlockingClient(port: server.port), try BlockingClient(port: server.port)]
        idle[0].send(Wire.hello())
        #expect(idle[0].readFrame()?.type == .welcome)  // both accepted
        idle[1].send(Wire.hello())
        #expect(idle[1].readFrame()?.type == .welcome)
        let waiting = try BlockingClient(port: server.port)  // the kernel completes it; the server does not accept
        let data = content(72, count: 5000)
        waiting.send(Array(String(data.count).utf8) + data)
        waiting.shutdownWrite()
        // Its bytes wait in the kernel while the server, at its cap, does not accept.
        #expect(waitUntil { (kernelQueuedBytes(serverPort: server.port, clientPort: waiting.localPort) ?? 0) >= data.count })
        #expect(server.onLoop { $0.connectionCount == 2 && $0.statistics.acceptPauses >= 1 })
        #expect(server.storedFiles().isEmpty, "accepted past the cap")
        idle.removeFirst()  // closes one
        #expect(waiting.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().count == 1 })
        server.stop()
        #expect(server.statistics.acceptPauses >= 1)
        #expect(server.contents(server.storedFiles()[0]) == data)
        _ = idle
    }

    /// The cap counts exactly the open connections whatever order they close in (the server's
    /// table moves its last entry into a leaving one's place): the connection moved by the
    /// first close must leave the table too when it closes, or the cap would stay reached.
    @Test func connectionsClosingInAnyOrderFreeTheirPlaces() throws {
        let server = try BackgroundServer { $0.maxConnections = 3 }
        func hello() throws -> BlockingClient {
            let client = try BlockingClient(port: server.port)
            client.send(Wire.hello())
            #expect(client.readFrame()?.type == .welcome, "accepted and answered")
            return client
        }
        func upload(_ index: Int) throws {
            let client = try BlockingClient(port: server.port)
            let data = content(index, count: 3000)
            client.send(Array(String(data.count).utf8) + data)
            client.shutdownWrite()
            #expect(client.readUntilEOF() != nil, "upload \(index) served")
        }
        var a: BlockingClient? = try hello()
        let b = try hello()
        var c: BlockingClient? = try hello()  // the cap: the table holds a, b, c
        a = nil                               // c takes a's place
        try upload(1)
        c = nil                               // the moved one leaves
        let d = try hello()
        var e: BlockingClient? = try hello()  // b, d, e: only possible if c's place was freed
        e = nil
        try upload(2)
        #expect(server.eventually { server.storedFiles().count == 2 })
        server.stop()
        #expect(Set(server.storedFiles().compactMap { server.contents($0) }) == [content(1, count: 3000), content(2, count: 3000)])
        _ = (a, b, c, d, e)
    }

    @Test func perAddressCapRefusesWithAnError() throws {
        let server = try BackgroundServer { $0.maxConnectionsPerAddress = 1; $0.headerTimeout = 0.5 }
        let first = try BlockingClient(port: server.port)
        first.send(Wire.hello())
        #expect(first.readFrame()?.type == .welcome)
        let second = try BlockingClient(port: server.port)
        second.send(Wire.hello())
        let frame = second.readFrame()
        #expect(frame?.type == .error)
        #expect(frame.map { Wire.decodeError($0.payload).code } == ProtocolError.tooManyConnections(limit: 1).code)
        #expect(second.readUntilEOF() != nil)
        // A seed client over the cap gets what its protocol knows: the close, no bytes
        // (issue 21, item 8).
        let seed = try BlockingClient(port: server.port)
        seed.send(Array("5hello".utf8))
        seed.shutdownWrite()
        #expect(seed.readUntilEOF() == [])
        // One that says nothing is closed at the header timeout, also without bytes.
        let silent = try BlockingClient(port: server.port)
        #expect(silent.readUntilEOF() == [])
        server.stop()
        #expect(server.statistics.connectionsRefused == 3)
        #expect(server.storedFiles().isEmpty)
    }
}

struct SecurityDefaultTests {
    @Test func nonLoopbackWithoutTokenRefusesToStart() throws {
        let loop = try Loop()
        var c = Server.Configuration()
        c.host = "0.0.0.0"
        c.port = 0
        c.udpEnabled = false
        c.directory = BackgroundServer.temporaryDirectory()
        let server = try Server(loop: loop, configuration: c)
        #expect(throws: ServerError.self) { try server.start() }
        do { try server.start() } catch { #expect(error.description.contains("--allow-anonymous")) }
        try loop.close()
    }

    /// On a non-loopback listener the seed protocol is off unless allowed; native works.
    @Test(arguments: [false, true])
    func seedProtocolIsOffOnNonLoopbackUnlessAllowed(allowSeed: Bool) throws {
        let server = try BackgroundServer {
            $0.host = "0.0.0.0"
            $0.allowAnonymous = true
            $0.allowSeedProtocol = allowSeed
        }
        let seed = try BlockingClient(port: server.port)
        let data = content(73, count: 1000)
        seed.send(Array(String(data.count).utf8) + data)
        seed.shutdownWrite()
        #expect(seed.readUntilEOF() != nil)
        let outcomes = try sendFiles([writeTemporaryFile(content(74, count: 3000), name: "native.bin")], port: server.port)
        #expect(outcomes.first?.succeeded == true)
        #expect(server.eventually { server.storedFiles().count == (allowSeed ? 2 : 1) })
        server.stop()
        #expect(server.storedFiles().contains("native.bin"))
    }
}

struct DescriptorExhaustionTests {
    /// Large seed uploads go socket → pipe → file by `splice`, through a pipe each file thread
    /// makes the first time. With no descriptors left for that pipe (a limit three above what
    /// the server holds: the connection, its file, and one spare, so no room for the pipe's two),
    /// the upload goes by copy instead and is stored byte for byte; the server holds no pipe
    /// afterwards (with room, it keeps the thread's pipe).
    @Test func aLargeSeedUploadIsStoredByCopyWhenNoDescriptorIsLeftForTheSplicePipe() throws {
        func descriptors(_ pid: Int32) -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).map {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "?"
            }
        }
        let data = content(97, count: 3 << 20)
        func upload(_ port: Int) throws {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            try connectLoopback(fd, port: port)
            let message = Array("\(data.count)".utf8) + data
            var sent = 0
            while sent < message.count {
                let n = message[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { throw TestError("send failed") }
                sent += n
            }
            shutdown(fd, Int32(SHUT_WR))
            var byte: UInt8 = 0
            _ = recv(fd, &byte, 1, 0)  // the server's close
        }
        // With room: the upload is spliced, and the thread's pipe stays.
        let roomy = try ServeProcess(arguments: ["--max-connections", "1"])
        let baseline = descriptors(roomy.process.processIdentifier).count
        try upload(roomy.port)
        #expect(roomy.eventually { roomy.storedFiles().count == 1 })
        // Its connection and file are closed; the file thread's pipe (two descriptors) stays.
        #expect(roomy.eventually { descriptors(roomy.process.processIdentifier).count == baseline + 2 }, "baseline \(baseline): \(descriptors(roomy.process.processIdentifier))")
        _ = roomy.stop()

        let tight = try ServeProcess(arguments: ["--max-connections", "1"], shellPrefix: "ulimit -n \(baseline + 3)")
        #expect(descriptors(tight.process.processIdentifier).count == baseline)
        try upload(tight.port)
        #expect(tight.eventually { tight.storedFiles().count == 1 })
        let name = try #require(tight.storedFiles().first)
        #expect(tight.contents(name) == data)
        #expect(tight.eventually { descriptors(tight.process.processIdentifier).count == baseline }, "baseline \(baseline): \(descriptors(tight.process.processIdentifier))")
        let end = try #require(tight.stop())
        #expect(end.status == 0)
        #expect(end.log.contains("1 uploads stored, 0 failed"), "\(end.log)")
    }

    /// `ulimit -n 40` with a connection cap far above it: accept runs out of descriptors. The
    /// server pauses accepting (no busy loop, no crash), logs why, and serves again once
    /// descriptors are free.
    @Test func outOfDescriptorsPausesAcceptingAndRecovers() throws {
        let server = try ServeProcess(arguments: ["--max-connections", "1000", "--log-level", "notice"], shellPrefix: "ulimit -n 40")
        var idle: [BlockingClient] = []
        for _ in 0..<100 { idle.append(try BlockingClient(port: server.port)) }
        // Out of descriptors: accepting pauses; the retry a second later fails and pauses again.
        // Between two such pauses a busy loop would burn the CPU and log the line many times.
        let line = "accepting paused until one closes"
        #expect(server.waitForLog(line))
        let cpuBefore = server.cpuSeconds
        let pausesBefore = server.log.text.components(separatedBy: line).count - 1
        #expect(server.waitForLog(line, count: pausesBefore + 1))
        let cpuWhileExhausted = server.cpuSeconds - cpuBefore
        let pausesAfter = server.log.text.components(separatedBy: line).count - 1
        #expect(server.isRunning)
        #expect(pausesAfter <= pausesBefore + 2, "\(pausesAfter - pausesBefore) pauses logged in one retry period: a busy loop")
        #expect(cpuWhileExhausted < 0.5, "\(cpuWhileExhausted) s of CPU between two retries while out of descriptors: a busy loop")
        idle.removeAll()
        let data = content(80, count: 50_000)
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8) + data)
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().count == 1 }, "\(server.log.text)")
        let end = server.stop()
        #expect(end?.status == 0)
        #expect(end?.log.contains("out of descriptors") == true, "\(end?.log ?? "no exit")")
        #expect(server.storedFiles().first.flatMap(server.contents) == data)
    }
}

struct PartialSweepTests {
    /// At start: seed partials nobody holds go, native partials older than the age limit or
    /// missing their metadata go, recent complete ones stay resumable. A partial some process
    /// holds (locked, as a live server's are) stays whatever its age.
    @Test func startUpRemovesStaleAndOrphanedPartialsAndKeepsResumableOnes() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let partial = directory + "/.datastream/partial"
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
        let ended = Process()
        ended.executableURL = URL(fileURLWithPath: "/bin/true")
        try ended.run()
        ended.waitUntilExit()
        func touch(_ name: String, ageSeconds: Int = 0) {
            #expect(FileManager.default.createFile(atPath: partial + "/" + name, contents: Data("x".utf8)))
            if ageSeconds > 0 {
                var times = [timeval(tv_sec: time(nil) - ageSeconds, tv_usec: 0), timeval(tv_sec: time(nil) - ageSeconds, tv_usec: 0)]
                utimes(partial + "/" + name, &times)
            }
        }
        touch("seed-host-\(ended.processIdentifier)-1.part")
        touch("seed-host-\(getpid())-999.part")  // held below: a live process's, left alone
        touch("aaaa.part", ageSeconds: 7200); touch("aaaa.meta", ageSeconds: 7200)  // stale
        touch("eeee.part", ageSeconds: 7200); touch("eeee.meta", ageSeconds: 7200)  // as old, but held
        touch("bbbb.part"); touch("bbbb.meta")  // resumable
        touch("cccc.part")  // no metadata
        touch("dddd.meta")  // no data
        touch("ffff.meta.tmp", ageSeconds: 120)  // left by a writer that died
        touch("gggg.meta.tmp")  // a live writer's, maybe
        // Held as another server holds what it writes: an open file description's lock.
        let holds = try ["seed-host-\(getpid())-999.part", "eeee.part"].map { name in
            let fd = try BlockingFileSystem.open(partial + "/" + name, flags: [.readWrite])
            #expect(try BlockingFileSystem.lockExclusively(fd))
            return fd
        }
        defer { for fd in holds { try? BlockingFileSystem.close(fd) } }
        let server = try BackgroundServer(directory: directory) { $0.partialMaxAge = 3600 }
        server.stop()
        #expect(server.partials() == ["bbbb.meta", "bbbb.part", "eeee.meta", "eeee.part", "gggg.meta.tmp", "seed-host-\(getpid())-999.part"])
    }
}

/// Clients that vanish mid-body: a reset (SO_LINGER 0) or a half-close. Nothing appears under a
/// final name, a native partial stays resumable, a seed partial is deleted, other uploads go on.
struct AbruptClientTests {
    @Test(arguments: [true, false])
    func aClientThatVanishesMidBodyLeavesNothingUnderAFinalName(reset: Bool) throws {
        let server = try BackgroundServer()
        let data = content(110, count: 1_000_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "vanish.bin")
        var native: BlockingClient? = try BlockingClient(port: server.port)
        try native?.handshake()
        #expect(try native?.announce(header) == 0)
        native?.send(Array(data[0..<300_000]))
        var seed: BlockingClient? = try BlockingClient(port: server.port)
        seed?.send(Array(String(1_000_000).utf8) + Array("x".utf8) + content(111, count: 300_000))
        // Meanwhile another upload is served.
        let other = content(112, count: 50_000)
        let bystander = try BlockingClient(port: server.port)
        bystander.send(Array(String(other.count).utf8) + other)
        bystander.shutdownWrite()
        #expect(bystander.readUntilEOF() != nil)
        #expect(waitUntil { server.hasRead(native!) && server.hasRead(seed!) })
        if reset {
            native?.resetOnClose()
            seed?.resetOnClose()
        } else {
            native?.shutdownWrite()
            seed?.shutdownWrite()
        }
        native = nil
        seed = nil
        // Both are seen as broken; the seed file goes (it never had a name), the native partial
        // (data and metadata) stays.
        let brokenLogged = { server.log.lines.filter { $0.contains("broken upload") } }
        #expect(server.eventually { brokenLogged().count == 2 && server.partials().count == 2 })
        #expect(server.partials().allSatisfy { !$0.hasPrefix("seed-") })
        #expect(server.storedFiles().count == 1)
        // Each broken upload is logged with what the client did, not with a side effect of it
        // (libuv reports a reset seen by a readiness poll as EBADF).
        let broken = brokenLogged()
        #expect(broken.count == 2, "\(broken)")
        #expect(broken.allSatisfy { $0.contains(reset ? "ECONNRESET" : "closed after") }, "\(broken)")
        // The server may still be closing the broken upload's partial: its id is busy until
        // then (the protocol's answer to an early retry), so the client retries as one would.
        let resumed = server.resume(header, data)
        let offset = resumed?.offset ?? 0
        #expect(offset > 0 && offset <= 300_000)
        #expect(resumed?.status == .stored)
        server.stop()
        #expect(server.contents("vanish.bin") == data)
        #expect(server.storedFiles().count == 2)
        #expect(server.storedFiles().contains { server.contents($0) == other })
        #expect(server.partials().isEmpty)
    }
}

/// The UDP sender reads its file in bounded pieces, never mapping it (issue 21, item 13).
struct SenderFileTests {
    /// A file truncated by another process while it is sent over UDP (a log being rotated)
    /// fails with a message that says so: the sender neither dies of SIGBUS nor reports success,
    /// and the receiver stores nothing.
    @Test(arguments: [false, true])
    func aFileTruncatedWhileSentOverUDPFailsWithAClearMessage(seedProtocol: Bool) throws {
        let server = try ServeProcess(arguments: ["--log-level", "debug", "--udp-idle-timeout", "1"], udp: true)
        // Native at 16 MB/s, seed at its 1 KiB per millisecond: either takes seconds.
        let size = seedProtocol ? 8 << 20 : 96 << 20
        let path = writeTemporaryFile(content(131, count: size), name: "rotated-\(seedProtocol).log")
        let sender = Process()
        sender.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        sender.arguments = ["send", path, "--to", "127.0.0.1:\(server.port)", "--udp"] + (seedProtocol ? ["--seed-protocol"] : ["--max-rate", "16"])
        let out = Pipe()
        sender.standardOutput = out
        sender.standardError = FileHandle.nullDevice
        try sender.run()
        let output = PipeCollector(out)
        #expect(server.waitForLog(seedProtocol ? "udp seed upload started" : "udp upload opened"))
        #expect(truncate(path, 4096) == 0)
        waitForExit(sender, seconds: 60)
        #expect(sender.terminationReason == .exit, "the sender died of signal \(sender.terminationStatus)")
        #expect(sender.terminationStatus == 1)
        let text = output.all()
        #expect(text.contains("FAILED  \(path): \(path) was truncated while it was being sent: it had \(size) bytes"), "\(text)")
        // The receiver hears of it (native: ABORT) or times the upload out (seed), and stores nothing.
        #expect(server.waitForLog(seedProtocol ? "broken udp seed upload" : "udp upload abandoned by the sender"))
        #expect(server.storedFiles().isEmpty)
        #expect(server.stop()?.status == 0)
    }
}

/// What unfinished native uploads one address can leave behind (issue 21, item 5).
struct PartialCapTests {
    /// Announces `header` and sends `bytes` of it, then closes without END.
    private func leave(_ header: FileHeader, sending bytes: [UInt8], port: Int) throws -> UInt64 {
        let client = try BlockingClient(port: port)
        try client.handshake()
        let offset = try client.announce(header)
        client.send(bytes)
        client.shutdownWrite()
        _ = client.readUntilEOF()
        return offset
    }

    @Test func announcingAndClosingLeavesNothingBehind() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        for i in 0..<100 {
            let header = FileHeader(uploadID: .random(), size: 1_000, digest: .sha256, name: "empty-\(i).bin")
            #expect(try leave(header, sending: [], port: server.port) == 0)
        }
        #expect(server.eventually { server.onLoop { $0.connectionCount } == 0 && server.partials().isEmpty }, "\(server.partials().count) files left")
    }

    @Test func anAddressPastItsCapIsRefusedUntilOneIsFinished() throws {
        let server = try BackgroundServer { $0.partialLimits.perAddress = 3 }
        defer { server.stop() }
        let data = content(71, count: 2_000)
        let headers = (0..<4).map { FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "held-\($0).bin") }
        for h in headers.prefix(3) { _ = try leave(h, sending: Array(data.prefix(100)), port: server.port) }
        #expect(server.eventually { server.onLoop { $0.connectionCount } == 0 && server.partials().count == 6 })
        // A fourth new upload from this address is refused, and says why.
        let client = try BlockingClient(port: server.port)
        try client.handshake()
        client.send(Wire.file(headers[3]))
        let refused = try client.result()
        #expect(refused.status == .rejected)
        #expect(refused.message.contains("unfinished uploads") && refused.message.contains("--max-partials-per-address"), "\(refused.message)")
        // Resuming one it holds is not new: allowed, and finishing it frees a place.
        #expect(try client.announce(headers[0]) == 100)
        client.send(Array(data[100...]))
        client.send(Wire.end(digest: Digests.compute(.sha256, data)))
        #expect(try client.result().status == .stored)
        #expect(try client.announce(headers[3]) == 0)
        #expect(server.partials().count == 6)
        #expect(server.storedFiles() == ["held-0.bin"])
    }

    @Test func partialsFoundAtStartCountAgainstTheirOwner() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let first = try BackgroundServer(directory: directory)
        let header = FileHeader(uploadID: .random(), size: 1_000, digest: .sha256, name: "kept.bin")
        _ = try leave(header, sending: content(72, count: 10), port: first.port)
        #expect(first.eventually { first.onLoop { $0.connectionCount } == 0 })
        first.stop()
        let meta = try String(contentsOfFile: directory + "/.datastream/partial/\(header.uploadID.hex).meta", encoding: .utf8)
        #expect(meta.contains("owner 047f000001"), "\(meta)")  // family, then the IPv4 address
        let second = try BackgroundServer(directory: directory) { $0.partialLimits.perAddress = 1 }
        defer { second.stop() }
        let client = try BlockingClient(port: second.port)
        try client.handshake()
        client.send(Wire.file(FileHeader(uploadID: .random(), size: 5, digest: .sha256, name: "new.bin")))
        #expect(try client.result().status == .rejected)
    }
}

/// What a second client that knows an upload's id can do to it (issue 21, item 4).
struct ForeignConnectionTests {
    /// Wrong bytes and a wrong END sent under someone else's id fail that connection, and cut
    /// the partial back to what it held: the owner resumes from there and stores its file.
    @Test func aFailedVerificationByAnotherConnectionKeepsWhatTheOwnerHeld() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let data = content(91, count: 20_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .sha256, name: "owned.bin")
        // The owner sends a part and is cut off.
        let owner = try BlockingClient(port: server.port)
        try owner.handshake()
        #expect(try owner.announce(header) == 0)
        owner.send(Array(data.prefix(5_000)))
        owner.shutdownWrite()
        _ = owner.readUntilEOF()
        #expect(server.eventually { server.onLoop { $0.connectionCount } == 0 })
        // Someone else, with the id and the header: the rest as garbage, then a wrong END. (The
        // id is busy until the server has closed the owner's partial: tried again until then.)
        var foreign: BlockingClient?
        #expect(server.eventually {
            guard let c = try? BlockingClient(port: server.port), (try? c.handshake()) != nil, let offset = try? c.announce(header) else { return false }
            foreign = c
            return offset == 5_000
        })
        let other = try #require(foreign)
        let garbage = content(92, count: 15_000)
        other.send(garbage)
        other.send(Wire.end(digest: Digests.compute(.sha256, data)))  // not the digest of what it sent
        let frame = other.readFrame()
        #expect(frame?.type == .result, "\(String(describing: frame?.type)) \(frame.map { String(decoding: $0.payload, as: UTF8.self) } ?? "")")
        #expect(frame.flatMap { try? Wire.decodeResult($0.payload) }?.status == .digestMismatch)
        // The owner comes back (again while the id is busy: the partial is cut back first):
        // the server still holds its 5,000 bytes.
        let back = server.resume(header, data)
        #expect(back?.offset == 5_000)
        #expect(back?.status == .stored)
        #expect(server.contents("owned.bin") == data)
    }
}
