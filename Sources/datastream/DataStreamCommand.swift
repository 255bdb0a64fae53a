import ArgumentParser
@preconcurrency import Glibc
import DataStream
import DataStreamBench
import DataStreamCore
import Foundation
import Logging
import Histogram
import UV

@main
struct DataStreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "datastream",
        abstract: "A high-concurrency file receiver on libuv, and its sender.",
        subcommands: [Serve.self, Send.self, Bench.self])
}

/// Reads a `--log-level` value.
extension Logger.Level: @retroactive ExpressibleByArgument {}

/// `--to HOST:PORT` (IPv6 hosts in brackets), or a one-line error.
func receiver(_ to: String) -> (host: String, port: Int) {
    guard let colon = to.lastIndex(of: ":") else { die("--to must be HOST:PORT, got \(to)") }
    let port = flag { try FlagValue.port(String(to[to.index(after: colon)...]), flag: "--to's port", allowZero: false) }
    return (String(to[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
}

/// The value of a numeric flag, parsed and range-checked by `parse` (a `FlagValue` call); a
/// refused value ends the process with its one line.
func flag<T>(_ parse: () throws -> T) -> T {
    do { return try parse() } catch { die("\(error)") }
}

func die(_ message: String) -> Never {
    FileHandle.standardError.write(Data("datastream: \(message)\n".utf8))
    exit(1)
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive uploads (seed, native and HTTP) on one event loop.",
        discussion: """
        Every upload is written to a partial file and appears under its final name only when it is
        complete (native: once its digest matched). The first line of output is "listening tcp
        HOST:PORT", the second "listening udp HOST:PORT" unless --no-udp. --dir must stay in place
        while the server runs.

        The TCP port also answers HTTP/1.1 (unless --no-http): PUT /NAME stores the body as NAME
        (curl -T FILE http://HOST:PORT/), GET /metrics is Prometheus's text format, /healthz and
        /readyz say whether the server is alive and not draining.

        SIGTERM or SIGINT drains: accepting stops at once, connections with no upload in progress
        are closed (native clients get ERROR 22), uploads in progress (TCP and UDP) may finish for
        --drain-timeout seconds, then what is left is cut: native partials are kept for resume,
        seed uploads (which cannot resume) are deleted. The exit status is then 0, with a line
        saying how many finished and how many were cut. A second signal exits at once (130). A bad
        argument, a port in use or an unusable directory gives one line and exit status 1.

        --workers N runs N worker processes on the same ports (SO_REUSEPORT), each with its own
        loop; this process supervises them: it prints the listening lines once every worker
        listens, starts a worker again if one dies, and passes SIGTERM and SIGINT on as a drain.
        Several servers, workers or not, may share one --dir (docs/SCALE.md).
        """)

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(parsing: .unconditional, help: "TCP port (0 picks a free one and prints it).") var port = "9000"
    @Option(help: "Directory to store uploads in (created if missing).") var dir = "./received"
    @Option(help: "Require every upload to prove this token: native and WebSocket clients by HMAC, HTTP uploads by Authorization: Bearer.") var token: String?
    @Flag(help: "fsync each file before it is put into place, and the directory after (an acknowledged upload survives a power cut).") var fsync = false
    @Option(parsing: .unconditional, help: "Largest file accepted (bytes, or with a unit: 64MiB, 1GiB); checked before a byte is written.") var maxFileSize = "1TiB"
    @Option(parsing: .unconditional, help: "Free space to keep on the target file system (bytes, or 64MiB, 1GiB); an upload that would not fit, counting those in progress, is refused at its start.") var minFreeSpace = "64MiB"
    @Option(parsing: .unconditional, help: "At start, remove native partial uploads not written to for this many seconds (default 7 days); the rest stay resumable. Receipts of uploads stored that long ago go too.") var partialMaxAge = "604800"
    @Option(parsing: .unconditional, help: "Unfinished native uploads (partials) one IP address may hold; past it a new upload is refused (0: no cap).") var maxPartialsPerAddress = "1000"
    @Option(parsing: .unconditional, help: "Bytes the partials of one IP address may hold (0: no cap).") var maxPartialBytesPerAddress = "64GiB"
    @Option(parsing: .unconditional, help: "Unfinished native uploads the server may hold in all (0: no cap).") var maxPartials = "100000"
    @Option(parsing: .unconditional, help: "Bytes all partials may hold (0: no cap).") var maxPartialBytes = "0"
    @Option(parsing: .unconditional, help: "Longest file name accepted from native clients, in UTF-8 bytes.") var maxNameLength = "\(NamePolicy.defaultMaxLength)"
    @Option(parsing: .unconditional, help: "Connections at once; at the cap, accepting pauses until one closes (default: half of the descriptor limit less 128).") var maxConnections: String?
    @Option(parsing: .unconditional, help: "Connections at once from one IP address; more are refused with an error (0: no limit).") var maxConnectionsPerAddress = "0"
    @Option(parsing: .unconditional, help: "Seconds from connect until an upload begins (native HELLO to FILE, or the seed size field).") var headerTimeout = "30"
    @Option(parsing: .unconditional, help: "Seconds without a byte from a client while the server waits for one (not a limit on an upload's total time).") var idleTimeout = "60"
    @Option(parsing: .unconditional, help: "On SIGTERM or SIGINT, seconds that uploads in progress may take to finish before they are cut (native partials stay resumable); a second signal exits at once.") var drainTimeout = "30"
    @Flag(help: "Allow listening on a non-loopback address without --token.") var allowAnonymous = false
    @Flag(help: "Accept the seed protocols (which cannot authenticate) on a non-loopback address.") var allowSeedProtocol = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel: Logger.Level = .info
    @Option(parsing: .unconditional, help: "UDP port (default: the TCP port's number).") var udpPort: String?
    @Flag(help: "Do not receive UDP.") var noUdp = false
    @Flag(help: "Do not answer HTTP on the TCP port (PUT uploads, /metrics, /healthz, /readyz).") var noHttp = false
    @Option(parsing: .unconditional, help: "Longest HTTP request head: target and header fields (bytes, 1KiB to 64KiB).") var maxHttpHead = "16KiB"
    @Option(help: "Run this shell command for every stored upload, with the upload as JSON on its standard input (name, path, size, digest, transport, peer, duration).") var onStored: String?
    @Option(parsing: .unconditional, help: "Completion hooks running at once; more wait their turn (1 to 256).") var onStoredLimit = "4"
    @Option(parsing: .unconditional, help: "Seconds a completion hook may run before it is killed.") var onStoredTimeout = "60"
    @Option(parsing: .unconditional, help: "UDP socket receive buffer to ask for (bytes, or 32MiB; past rmem_max when run as root).") var udpReceiveBuffer = "32MiB"
    @Option(parsing: .unconditional, help: "Seconds without a datagram before a UDP session is closed (native partials stay resumable).") var udpIdleTimeout = "30"
    @Flag(help: "Do not let the kernel coalesce UDP datagrams into one receive (UDP_GRO).") var noUdpOffload = false
    @Option(parsing: .unconditional, help: "Native UDP uploads at once (more get ABORT 'server busy').") var udpMaxSessions = "256"
    @Option(parsing: .unconditional, help: "Native UDP uploads at once from one IP address.") var udpMaxSessionsPerAddress = "32"
    @Option(parsing: .unconditional, help: "Seed UDP uploads (sources) at once.") var udpMaxSeedSessions = "64"
    @Option(parsing: .unconditional, help: "Seed UDP uploads (sources) at once from one IP address.") var udpMaxSeedSessionsPerAddress = "16"
    @Option(parsing: .unconditional, help: "Receive window memory per native UDP upload (bytes, or 16MiB).") var udpWindow = "16MiB"
    @Option(parsing: .unconditional, help: "Receive window memory of all native UDP uploads together (bytes, or 512MiB); an upload that would exceed it gets ABORT 'server busy'.") var udpMemory = "512MiB"
    @Option(help: "Proxies allowed to send a PROXY protocol v2 header (HAProxy's send-proxy-v2), comma-separated numeric addresses or prefixes (127.0.0.1, 10.0.0.0/8): a connection from one must begin with the header and is served as coming from the client it names (per-address caps, logs); from anyone else a PROXY header is refused.") var proxyProtocol: String?
    @Option(parsing: .unconditional, help: "Worker processes serving the same ports, each with its own loop (SO_REUSEPORT): 1 to 256, or auto (one per core). A supervisor starts them, restarts one that dies, and drains them all on SIGTERM or SIGINT.") var workers = "1"
    @Option(parsing: .unconditional, help: .hidden) var workerSlot: String?
    @Option(parsing: .unconditional, help: "Threads that write files (libuv's threadpool). Default: one per core (at least 2); with --fsync, which waits on the disk, twice that (at least libuv's 4). UV_THREADPOOL_SIZE in the environment is used if this is not given.") var threadpoolSize: String?

    func run() throws {
        UV.ignoreBrokenPipes()  // a peer closing first must not kill the process
        // Before anything starts libuv's threadpool (it reads the size once). Its work is copying
        // into the page cache, which is CPU work: more threads than cores only take turns.
        // Every number typed goes through FlagValue: one path, one kind of message.
        let threadpool = threadpoolSize.map { t in flag { try FlagValue.integer(t, flag: "--threadpool-size", in: 1...Threadpool.maximum) } }
        if let threadpool {
            Threadpool.setSize(threadpool)
        } else if Threadpool.requestedSize == nil {
            Threadpool.setSize(fsync ? max(Threadpool.libuvDefault, 2 * Threadpool.cores) : max(2, Threadpool.cores))
        }
        let longest = FlagValue.longestSeconds
        var configuration = Server.Configuration()
        // Every setting goes through Server.Configuration.set: the ranges the C API checks too.
        var settings: [(String, String)] = [
            ("host", host), ("port", port), ("dir", dir), ("fsync", "\(fsync)"), ("max-file-size", maxFileSize),
            ("min-free-space", minFreeSpace), ("max-name-length", maxNameLength), ("max-connections-per-address", maxConnectionsPerAddress),
            ("partial-max-age", partialMaxAge), ("max-partials-per-address", maxPartialsPerAddress),
            ("max-partial-bytes-per-address", maxPartialBytesPerAddress), ("max-partials", maxPartials), ("max-partial-bytes", maxPartialBytes),
            ("header-timeout", headerTimeout), ("idle-timeout", idleTimeout), ("allow-anonymous", "\(allowAnonymous)"),
            ("allow-seed-protocol", "\(allowSeedProtocol)"), ("udp", "\(!noUdp)"), ("http", "\(!noHttp)"), ("max-http-head", maxHttpHead), ("on-stored-limit", onStoredLimit), ("on-stored-timeout", onStoredTimeout), ("udp-receive-buffer", udpReceiveBuffer),
            ("udp-idle-timeout", udpIdleTimeout), ("udp-offload", "\(!noUdpOffload)"), ("udp-max-sessions", udpMaxSessions),
            ("udp-max-sessions-per-address", udpMaxSessionsPerAddress), ("udp-max-seed-sessions", udpMaxSeedSessions),
            ("udp-max-seed-sessions-per-address", udpMaxSeedSessionsPerAddress), ("udp-window", udpWindow), ("udp-memory", udpMemory),
        ]
        if let token { settings.append(("token", token)) }
        if let udpPort { settings.append(("udp-port", udpPort)) }
        if let proxyProtocol { settings.append(("proxy-protocol", proxyProtocol)) }
        if let onStored { settings.append(("on-stored", onStored)) }
        if let maxConnections { settings.append(("max-connections", maxConnections)) }
        for (name, value) in settings {
            flag { try configuration.set(name, value, flag: "--" + name) }
        }
        let drainSeconds = flag { try FlagValue.seconds(self.drainTimeout, flag: "--drain-timeout", in: 0...longest) }
        let workerCount = workers.trimmingCharacters(in: .whitespaces) == "auto" ? min(256, Threadpool.cores)
            : flag { try FlagValue.integer(workers, flag: "--workers", in: 1...256) }
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // A parent may have spawned us with these signals blocked (Foundation's Process does):
        // unblock them, or SIGINT/SIGTERM would never reach the loop, nor a worker's end
        // (SIGCHLD) a supervisor's.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for signum in [SIGINT, SIGTERM, SIGCHLD] { sigaddset(&unblock, signum) }
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        if let workerSlot {
            // One of a supervisor's workers: its ports are shared, its UDP cookies made with the
            // supervisor's secret, and it ends (draining) if the supervisor does.
            let slot = flag { try FlagValue.integer(workerSlot, flag: "--worker-slot", in: 0...255) }
            let environment = ProcessInfo.processInfo.environment
            if let file = environment["DATASTREAM_WORKER_FILE"], let count = environment["DATASTREAM_WORKERS"].flatMap({ Int($0) }), slot < count {
                configuration.workerSlot = .init(file: file, slot: slot, workers: count)
            }
            configuration.sharedPorts = true
            configuration.udpCookieSecret = ProcessInfo.processInfo.environment["DATASTREAM_WORKER_SECRET"].flatMap { [UInt8](hex: $0) }
            if let supervisor = ProcessInfo.processInfo.environment["DATASTREAM_SUPERVISOR_PID"].flatMap({ pid_t($0) }),
               !ParentDeath.signalOnParentDeath(SIGTERM, expectedParent: supervisor) {
                die("the supervisor (pid \(supervisor)) has ended")
            }
        } else if workerCount > 1 {
            runSupervisor(configuration, workers: workerCount)
        }
        let loop: Loop
        do { loop = try Loop() } catch { die("\(error)") }
        let server: Server
        do {
            server = try Server(loop: loop, configuration: configuration, logger: Logger(label: "datastream"))
        } catch { die("\(error)") }
        let address: SocketAddress
        do { address = try server.start() } catch { die("\(error)") }
        Logger(label: "datastream").info("file threads: \(Threadpool.requestedSize.map(String.init) ?? "libuv's default") (UV_THREADPOOL_SIZE)")
        var signals: [UV.Signal] = []
        var stopping = false
        for signum in [SIGINT, SIGTERM] {
            do {
                let s = try UV.Signal(loop: loop)
                try s.start(signum) { _ in
                    if stopping {  // a second signal: leave at once (partials on disk stay resumable)
                        FileHandle.standardError.write(Data("datastream: second signal: exiting now\n".utf8))
                        Glibc.exit(130)
                    }
                    stopping = true
                    server.drain(deadline: drainSeconds) { outcome in
                        let d = outcome
                        FileHandle.standardError.write(Data("datastream: drained; \(d.inProgressAtStart) uploads were in progress, \(d.storedWhileDraining) stored while draining, \(d.cutResumable) cut at the deadline and resumable, \(d.cutLost) seed uploads cut and lost\n".utf8))
                        for s in signals { s.close() }
                    }
                }
                signals.append(s)
            } catch { die("\(error)") }
        }
        // Announced once SIGTERM and SIGINT drain: a script that signals as soon as it reads
        // these lines gets a drain, never the default action.
        print("listening tcp \(address)")
        if let udp = server.udpAddress {
            print("listening udp \(udp)")
            Logger(label: "datastream").info("udp receive buffer: kernel granted \(server.udpReceiveBufferGranted) bytes (getsockopt); receive offload \(server.udpReceiveOffloadEnabled ? "on" : "off")")
        }
        fflush(stdout)
        loop.run()
        FileHandle.standardError.write(Data("datastream: \(workerSlot.map { "worker \($0) " } ?? "")stopped; \(Serve.summary(server.statistics))\n".utf8))
        try? loop.close()
    }

    /// What a stop line says of a server's statistics.
    static func summary(_ s: Server.Statistics) -> String {
        "\(s.uploadsStored) uploads stored\(s.uploadsAlreadyStored > 0 ? " (and \(s.uploadsAlreadyStored) sent again, already stored)" : ""), \(s.uploadsFailed) failed, \(s.connectionsAccepted) connections (\(s.connectionsTimedOut) timed out, \(s.connectionsRefused) refused), \(s.uploadsDrained) drained"
    }
}

extension Serve {
    /// `--workers N`: reserves the ports (bound with SO_REUSEPORT, so the workers can bind them
    /// too), starts N workers, prints the listening lines once every worker listens, and exits
    /// when they have all ended (after SIGTERM or SIGINT, drained).
    func runSupervisor(_ configuration: Server.Configuration, workers: Int) -> Never {
        let loop: Loop
        do { loop = try Loop() } catch { die("\(error)") }
        let tcp: SocketAddress
        var udp: SocketAddress?
        var udpReservation: UDPSocket?
        let reservation: TCPListener
        do {
            reservation = try TCPListener(loop: loop)
            try reservation.bindShared(SocketAddress.resolve(configuration.host, port: configuration.port, on: loop))
            tcp = try reservation.localAddress()
            if configuration.udpEnabled {
                // Held until every worker listens, so no one else takes the number meanwhile.
                let u = try UDPSocket(loop: loop)
                try u.bindShared(SocketAddress(host: tcp.host, port: configuration.udpPort ?? tcp.port))
                udp = try u.localAddress()
                udpReservation = u
            }
        } catch { die("\(error)") }
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }.hexString
        // Where the workers publish their numbers for each other's /metrics and this last line.
        var isDirectory: ObjCBool = false
        let shm = FileManager.default.fileExists(atPath: "/dev/shm", isDirectory: &isDirectory) && isDirectory.boolValue && access("/dev/shm", W_OK) == 0
        let numbers = (shm ? "/dev/shm" : NSTemporaryDirectory()) + "/datastream-workers-\(getpid())"
        unlink(numbers)
        let original = Array(CommandLine.arguments.dropFirst())
        let plan = WorkerSupervisor.Plan(
            executable: "/proc/self/exe",
            arguments: { [udp] slot in WorkerCommandLine.arguments(from: original, port: tcp.port, udpPort: udp?.port, slot: slot) },
            workers: workers,
            environment: ["DATASTREAM_WORKER_SECRET=\(secret)", "DATASTREAM_SUPERVISOR_PID=\(getpid())",
                          "DATASTREAM_WORKER_FILE=\(numbers)", "DATASTREAM_WORKERS=\(workers)"],
            udp: udp != nil)
        var exitStatus: Int32 = 0
        let supervisor = WorkerSupervisor(loop: loop, plan: plan, onReady: {
            udpReservation?.close()
            udpReservation = nil
            print("listening tcp \(tcp)")
            if let udp { print("listening udp \(udp)") }
            fflush(stdout)
        }, onWorkerEvent: { line in
            FileHandle.standardError.write(Data("datastream: \(line)\n".utf8))
        }, onExit: { status, reason in
            if let reason { FileHandle.standardError.write(Data("datastream: \(reason)\n".utf8)) }
            exitStatus = status
            udpReservation?.close()
            reservation.close()
        })
        do { try supervisor.start() } catch { die("\(error)") }
        loop.run()
        let restarts = supervisor.restarts.reduce(0, +)
        let all = Server.workerTotals(file: numbers, workers: workers).map { "; all of them: \($0.uploadsStored) uploads stored, \($0.uploadsFailed) failed, \($0.bytesReceived) bytes received" } ?? ""
        unlink(numbers)
        FileHandle.standardError.write(Data("datastream: supervisor stopped; \(workers) workers, \(restarts) restarts\(all)\n".utf8))
        try? loop.close()
        Glibc.exit(exitStatus)
    }
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send files to a DataStream receiver (native protocol: several files on one connection, resume, digests).",
        discussion: """
        The upload id derives from the file's path, size and modification time, keyed with a
        secret kept in the state directory (so no one else can compute it), so running the
        same command again after an interruption resumes from the bytes the server holds, and
        running it after the file was stored stores nothing twice (the server answers from its
        receipt with the stored name). Exit status 1 if any file failed.
        """)

    @Argument(help: "Files to send.") var files: [String]
    @Option(help: "Receiver as HOST:PORT.") var to: String
    @Option(help: "Token, if the receiver requires one.") var token: String?
    @Flag(help: "Print one JSON object with the outcome of every file.") var json = false
    @Flag(help: "Speak the seed protocol (size digits, then bytes; one connection per file).") var seedProtocol = false
    @Option(help: "Digest: xxh3-128 or sha256.") var digest = "xxh3-128"
    @Flag(help: "Send over UDP: native reliable UDP, or the seed's UDP client with --seed-protocol.") var udp = false
    @Option(parsing: .unconditional, help: "UDP: payload bytes per datagram (512-16384; 1200 is safe on the internet, 8192 suits loopback and jumbo frames).") var chunkSize = "1200"
    @Option(parsing: .unconditional, help: "UDP: cap on the sending rate in MB/s (default: none; the rate is found by probing).") var maxRate: String?
    @Option(parsing: .unconditional, help: "UDP seed protocol: pause after each datagram, in milliseconds (the seed client's is 1).") var seedPause = "1"
    @Option(help: "Where the sender keeps the secret its upload ids are keyed with (default: $DATASTREAM_STATE_DIR, else $XDG_STATE_HOME/datastream, else ~/.local/state/datastream).") var stateDir: String?

    func run() throws {
        UV.ignoreBrokenPipes()  // a peer closing first must not kill the process
        let (host, port) = receiver(to)
        guard let algorithm = DigestAlgorithm(name: digest) else { die("unknown digest \(digest) (xxh3-128 or sha256)") }
        let identity: UploadIdentity
        do {
            identity = try UploadIdentity(stateDirectory: stateDir ?? UploadIdentity.defaultStateDirectory)
        } catch {
            FileHandle.standardError.write(Data("datastream: \(error); uploads cut short now cannot be resumed by a later run\n".utf8))
            identity = .ephemeral()
        }
        var options = Sender.Options(host: host, port: port)
        options.identity = identity
        options.token = token
        options.seedProtocol = seedProtocol
        options.digest = algorithm

        let chunkSize = flag { try FlagValue.integer(self.chunkSize, flag: "--chunk-size", in: UDPWire.minimumChunkSize...UDPWire.maximumChunkSize) }
        let maxRate = self.maxRate.map { r in flag { try FlagValue.number(r, flag: "--max-rate", in: 0.001...1_000_000, unit: "MB/s") } }
        let seedPause = flag { try FlagValue.number(self.seedPause, flag: "--seed-pause", in: 0...60_000, unit: "milliseconds") }
        let loop: Loop
        do { loop = try Loop() } catch { die("\(error)") }
        let sendFiles: (@escaping ([Sender.Outcome]) -> Void) -> Void
        let sent: () -> UInt64
        var udpStatistics: () -> UDPSender.TransferStatistics? = { nil }
        if udp {
            var u = UDPSender.Options(host: host, port: port)
            u.identity = identity
            u.token = token
            u.digest = algorithm
            u.chunkSize = chunkSize
            u.maxRate = maxRate.map { $0 * 1e6 }
            u.seedProtocol = seedProtocol
            u.seedPause = seedPause / 1000
            let sender = UDPSender(loop: loop, options: u)
            sendFiles = { [files] done in sender.send(files, completion: done) }
            sent = { sender.totalSent }
            udpStatistics = { seedProtocol ? nil : sender.statistics }
        } else {
            let sender = Sender(loop: loop, options: options)
            sendFiles = { [files] done in sender.send(files) { done($0) } }
            sent = { sender.totalSent }
        }
        let total = files.reduce(UInt64(0)) { sum, path in
            sum + ((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? 0)
        }
        let bar = isatty(2) == 1 && !json ? ProgressBar(total: total) : nil
        var ticker: UV.Timer?
        if let bar {
            ticker = try? UV.Timer(loop: loop)
            try? ticker?.start(timeout: 200, repeat: 200) { bar.draw(sent: sent(), now: loop.now) }
        }
        var results: [Sender.Outcome] = []
        let started = loop.now
        sendFiles { outcomes in
            results = outcomes
            ticker?.close()
        }
        loop.run()
        loop.updateTime()
        let seconds = max(Double(loop.now - started) / 1000, 0.001)
        try? loop.close()
        bar?.finish(sent: sent())
        report(results, seconds: seconds, udp: udpStatistics())
        if results.contains(where: { !$0.succeeded }) { throw ExitCode(1) }
    }

    private func report(_ results: [Sender.Outcome], seconds: Double, udp: UDPSender.TransferStatistics?) {
        if json {
            struct FileJSON: Codable { var path: String; var size: UInt64; var sent: UInt64; var resumedFrom: UInt64; var ok: Bool; var storedName: String; var digest: String; var message: String }
            struct UDPJSON: Codable { var datagrams: UInt64; var retransmitted: UInt64; var statuses: UInt64; var finalRateBytesPerSecond: Double; var minimumRoundTripMicroseconds: UInt64 }
            struct Report: Codable { var files: [FileJSON]; var seconds: Double; var ok: Bool; var udp: UDPJSON? }
            let files = results.map { FileJSON(path: $0.path, size: $0.size, sent: $0.bytesSent, resumedFrom: $0.resumedFrom, ok: $0.succeeded, storedName: $0.storedName, digest: $0.digest, message: $0.message) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let data = (try? encoder.encode(Report(files: files, seconds: seconds, ok: !results.contains { !$0.succeeded },
                                                       udp: udp.map { UDPJSON(datagrams: $0.datagramsSent, retransmitted: $0.retransmitted, statuses: $0.statusesReceived, finalRateBytesPerSecond: $0.finalRate, minimumRoundTripMicroseconds: $0.minimumRoundTrip) }))) ?? Data()
            print(String(decoding: data, as: UTF8.self))
            return
        }
        for r in results {
            if r.succeeded {
                // The server held every byte already: stored before (its receipt), or all
                // received and only the confirmation missing.
                let resumed = r.resumedFrom > 0 && r.resumedFrom == r.size ? " (already on the server, nothing sent)"
                    : r.resumedFrom > 0 ? " (resumed at \(r.resumedFrom))" : ""
                let stored = r.storedName.isEmpty ? "" : " as \(r.storedName)"
                print("ok      \(r.path): \(r.size) bytes\(stored)\(resumed)")
            } else {
                print("FAILED  \(r.path): \(r.message)")
            }
        }
        let bytes = results.reduce(UInt64(0)) { $0 + $1.bytesSent }
        print(String(format: "%d of %d files sent, %.1f MB in %.2f s (%.1f MB/s)", results.filter(\.succeeded).count, results.count, Double(bytes) / 1e6, seconds, Double(bytes) / 1e6 / seconds))
        if let udp, udp.datagramsSent > 0 {
            print(String(format: "udp: %llu datagrams, %llu retransmitted (%.3f%%), minimum round trip %llu µs", udp.datagramsSent, udp.retransmitted, Double(udp.retransmitted) * 100 / Double(udp.datagramsSent), udp.minimumRoundTrip))
        }
    }
}

/// A one-line progress bar on standard error: bytes, rate, ETA.
final class ProgressBar {
    let total: UInt64
    private var lastSent: UInt64 = 0
    private var lastTime: UInt64 = 0
    private var rate: Double = 0
    init(total: UInt64) { self.total = total }

    func draw(sent: UInt64, now: UInt64) {
        if lastTime > 0, now > lastTime {
            let instant = Double(sent - lastSent) / (Double(now - lastTime) / 1000)
            rate = rate == 0 ? instant : 0.7 * rate + 0.3 * instant
        }
        lastSent = sent
        lastTime = now
        let fraction = total == 0 ? 1 : min(1, Double(sent) / Double(total))
        let width = 30
        let filled = Int(fraction * Double(width))
        let eta = rate > 0 ? String(format: "%.0fs", Double(total - min(sent, total)) / rate) : "--"
        let line = String(format: "\r[%@%@] %5.1f%% %.1f/%.1f MB %.1f MB/s ETA %@ ",
                          String(repeating: "#", count: filled), String(repeating: ".", count: width - filled),
                          fraction * 100, Double(sent) / 1e6, Double(total) / 1e6, rate / 1e6, eta)
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish(sent: UInt64) {
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load a receiver with many simultaneous uploads of verifiable content, and report throughput and latency.",
        discussion: """
        Every upload's bytes derive from --seed and its index, so --verify DIR can check each stored
        file afterwards whatever name the receiver gave it. Sizes: 1MiB (fixed), 4KiB-64KiB (uniform),
        or 4KiB,1MiB,16MiB (picked per upload). Exit status 1 if any upload failed or did not verify.
        """)

    @Option(help: "Receiver as HOST:PORT.") var to: String
    @Option(name: .customLong("protocol"), help: "seed (size digits, bytes, close), native (DataStream's protocol), udp-native (its reliable UDP), udp-seed (the seed's UDP framing: no acknowledgement, so only --verify tells what arrived), http-put (PUT /NAME, one per connection: DataStream or a WebDAV server) or websocket (DataStream's upload WebSocket at /ws, one upload per connection).") var wireProtocol = "seed"
    @Option(parsing: .unconditional, help: "Uploads in flight at once (one connection each).") var concurrency = "16"
    @Option(parsing: .unconditional, help: "Uploads in all (default 100, or unlimited with --duration).") var uploads: String?
    @Option(parsing: .unconditional, help: "Stop starting uploads after this many seconds.") var duration: String?
    @Option(help: "Upload size: 1MiB, 4KiB-64KiB, or 4KiB,1MiB,16MiB.") var size = "1MiB"
    @Option(parsing: .unconditional, help: "Seed of the content and of the sizes.") var seed = "1"
    @Option(help: "Token, if the receiver requires one (native protocol).") var token: String?
    @Option(help: "After the run, check every file in this directory (the receiver's) against what was sent.") var verify: String?
    @Option(parsing: .unconditional, help: "Fail an upload that makes no progress for this many seconds.") var timeout = "30"
    @Option(parsing: .unconditional, help: "For a 127.x.x.x target: spread connections over this many source addresses 127.0.0.1... (1: the kernel's choice).") var sourceAddresses = "16"
    @Option(parsing: .unconditional, help: "Open model: start this many uploads per second on schedule, whether or not earlier ones finished (--concurrency still caps those in flight); latency is also reported from when each upload was due (coordinated omission corrected). Default: closed model, a new upload as soon as one ends.") var rate: String?
    @Option(parsing: .unconditional, help: "Loops on as many threads, each with its share of the uploads, connections and rate; one report (default: 1 for a receiver on this machine, which needs the cores itself; else one per core).") var threads: String?
    @Option(help: "Also write the latency percentile curve and the throughput of each second as an SVG picture to this file.") var report: String?
    @Flag(help: "Print the report as one JSON object.") var json = false

    func run() throws {
        UV.ignoreBrokenPipes()  // a peer closing first must not kill the process
        let (host, port) = receiver(to)
        let threads = self.threads.map { t in flag { try FlagValue.integer(t, flag: "--threads", in: 1...1024) } }
        let sourceAddresses = flag { try FlagValue.integer(self.sourceAddresses, flag: "--source-addresses", in: 1...254) }
        guard let wire = LoadGenerator.WireProtocol(rawValue: wireProtocol) else {
            die("--protocol must be one of \(LoadGenerator.WireProtocol.allCases.map(\.rawValue).joined(separator: ", ")), got \(wireProtocol)")
        }
        let concurrency = flag { try FlagValue.integer(self.concurrency, flag: "--concurrency", in: 1...1_000_000) }
        let duration = self.duration.map { d in flag { try FlagValue.seconds(d, flag: "--duration", in: 0.001...FlagValue.longestSeconds) } }
        let uploads = self.uploads.map { u in UInt64(flag { try FlagValue.integer(u, flag: "--uploads", in: 1...Int.max) }) }
        let timeout = flag { try FlagValue.seconds(self.timeout, flag: "--timeout", in: 0.001...FlagValue.longestSeconds) }
        let seed = UInt64(flag { try FlagValue.integer(self.seed, flag: "--seed", in: 0...Int.max) })
        let rate = self.rate.map { r in flag { try FlagValue.number(r, flag: "--rate", in: 0.001...10_000_000, unit: "uploads per second") } }
        let sizes: SizeDistribution
        do { sizes = try SizeDistribution(parsing: size) } catch { die("--size: \(error)") }
        var options = LoadGenerator.Options(host: host, port: port)
        options.wireProtocol = wire
        options.concurrency = concurrency
        options.uploads = uploads ?? (duration == nil ? 100 : nil)
        options.duration = duration
        options.sizes = sizes
        options.seed = seed
        options.token = token
        options.stallTimeout = timeout
        options.sourceAddresses = sourceAddresses
        options.rate = rate

        let threadCount: Int
        if let threads {
            threadCount = threads
        } else {
            let local: Bool = {
                guard let loop = try? Loop() else { return true }
                defer { try? loop.close() }
                return (try? SocketAddress.resolve(host, port: port, on: loop))?.isOnThisMachine ?? true
            }()
            threadCount = local ? 1 : max(1, ProcessInfo.processInfo.activeProcessorCount)
        }
        let report: LoadGenerator.Report
        let content: BenchContent
        if threadCount > 1 {
            do { (report, content) = try LoadGroup.run(options, threads: threadCount) } catch { die("\(error)") }
        } else {
            let loop: Loop
            do { loop = try Loop() } catch { die("\(error)") }
            let generator = LoadGenerator(loop: loop, options: options)
            let live = isatty(2) == 1 && !json
            var final: LoadGenerator.Report?
            do {
                try generator.run(progress: { r in
                    guard live else { return }
                    let total = options.uploads.map { " of \($0)" } ?? ""
                    let line = String(format: "\r%llu%@ uploads done, %d in flight, %.1f MB/s, %llu errors ", r.completed, total, r.inFlight, r.megabytesPerSecond, r.failed)
                    FileHandle.standardError.write(Data(line.utf8))
                }) { final = $0 }
            } catch { die("\(error)") }
            loop.run()
            try? loop.close()
            if live { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            guard let done = final else { die("the run did not finish") }
            (report, content) = (done, generator.content)
        }
        if let path = self.report {
            let title = "bench (\(options.wireProtocol.rawValue)): \(report.completed) × \(options.sizes), \(options.concurrency) at once" + (options.rate.map { String(format: ", %g/s", $0) } ?? "")
            do { try BenchChart.svg(report, title: title).write(toFile: path, atomically: true, encoding: .utf8) } catch { die("--report \(path): \(error.localizedDescription)") }
        }
        let verification = verify.map { BenchVerifier.verify(directory: $0, content: content, sizes: sizes, confirmed: report.succeeded) }
        print(render(report, verification: verification, options: options, threads: threadCount))
        if report.failed > 0 || verification.map({ !$0.ok }) == true { throw ExitCode(1) }
    }

    private func render(_ r: LoadGenerator.Report, verification v: BenchVerification?, options: LoadGenerator.Options, threads: Int) -> String {
        let p = { (q: Double) in r.completed > 0 ? Double(r.latency.valueAtPercentile(q)) / 1000 : 0 }
        let maxLatency = r.completed > 0 ? Double(r.latency.max) / 1000 : 0
        let corrected = r.correctedLatency.flatMap { h in
            r.completed > 0 ? (p50: Double(h.valueAtPercentile(50)) / 1000, p90: Double(h.valueAtPercentile(90)) / 1000, p99: Double(h.valueAtPercentile(99)) / 1000, max: Double(h.max) / 1000) : nil
        }
        if json {
            struct Latency: Codable { var p50: Double; var p90: Double; var p99: Double; var max: Double }
            struct Verification: Codable { var filesChecked: Int; var verified: Int; var mismatches: [String]; var missing: [UInt64]; var unconfirmed: Int; var foreign: Int; var ok: Bool }
            struct Schedule: Codable { var rate: Double; var maxLagMilliseconds: Double; var lateStarts: UInt64 }
            struct Report: Codable {
                var target: String; var wireProtocol: String; var concurrency: Int; var threads: Int; var sizes: String; var seed: UInt64
                var uploadsCompleted: UInt64; var uploadsFailed: UInt64; var bytes: UInt64; var seconds: Double
                var megabytesPerSecond: Double; var gigabitsPerSecond: Double; var uploadsPerSecond: Double
                var latencyMilliseconds: Latency; var errors: [String: UInt64]; var errorSamples: [String]
                var verification: Verification?
                var correctedLatencyMilliseconds: Latency?; var schedule: Schedule?
            }
            let out = Report(target: to, wireProtocol: options.wireProtocol.rawValue, concurrency: options.concurrency, threads: threads, sizes: options.sizes.description, seed: options.seed,
                             uploadsCompleted: r.completed, uploadsFailed: r.failed, bytes: r.bytes, seconds: r.seconds,
                             megabytesPerSecond: r.megabytesPerSecond, gigabitsPerSecond: r.gigabitsPerSecond, uploadsPerSecond: r.uploadsPerSecond,
                             latencyMilliseconds: Latency(p50: p(50), p90: p(90), p99: p(99), max: maxLatency), errors: r.failures, errorSamples: r.sampleMessages,
                             verification: v.map { Verification(filesChecked: $0.filesChecked, verified: $0.verified, mismatches: $0.mismatches, missing: $0.missing, unconfirmed: $0.unconfirmed, foreign: $0.foreign, ok: $0.ok) },
                             correctedLatencyMilliseconds: corrected.map { Latency(p50: $0.p50, p90: $0.p90, p99: $0.p99, max: $0.max) },
                             schedule: options.rate.map { Schedule(rate: $0, maxLagMilliseconds: Double(r.maxScheduleLagMicroseconds) / 1000, lateStarts: r.lateStarts) })
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return String(decoding: (try? encoder.encode(out)) ?? Data(), as: UTF8.self)
        }
        var lines = [
            "target        \(to) (\(options.wireProtocol.rawValue)), \(options.concurrency) at once\(threads > 1 ? " on \(threads) threads" : ""), sizes \(options.sizes)",
            String(format: "uploads       %llu done, %llu failed in %.2f s (%.1f uploads/s)", r.completed, r.failed, r.seconds, r.uploadsPerSecond),
            String(format: "throughput    %.1f MB/s (%.2f Gbit/s), %.1f MB sent", r.megabytesPerSecond, r.gigabitsPerSecond, Double(r.bytes) / 1e6),
            String(format: "latency ms    p50 %.2f  p90 %.2f  p99 %.2f  max %.2f", p(50), p(90), p(99), maxLatency),
        ]
        if let rate = options.rate {
            lines[0] += String(format: ", open model at %.1f uploads/s", rate)
            lines[3] += "  (from each upload's start)"
            if let c = corrected {
                lines.append(String(format: "corrected ms  p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (from when each was due)", c.p50, c.p90, c.p99, c.max))
            }
            lines.append(String(format: "schedule      at most %.2f ms behind; %llu uploads started more than 1 ms late", Double(r.maxScheduleLagMicroseconds) / 1000, r.lateStarts))
        }
        if r.failures.isEmpty {
            lines.append("errors        none")
        } else {
            lines.append("errors        " + r.failures.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            lines += r.sampleMessages.map { "  \($0)" }
        }
        if let v {
            lines.append("verify        \(v.verified) of \(r.completed) confirmed uploads stored intact; \(v.mismatches.count) mismatched, \(v.missing.count) missing, \(v.unconfirmed) stored but unconfirmed, \(v.foreign) other files")
            lines += v.mismatches.prefix(20).map { "  MISMATCH \($0)" }
            if !v.missing.isEmpty { lines.append("  missing uploads: " + v.missing.prefix(20).map(String.init).joined(separator: ", ")) }
        }
        return lines.joined(separator: "\n")
    }
}
