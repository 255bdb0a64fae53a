import ArgumentParser
@preconcurrency import Glibc
import DataStream
import DataStreamCore
import Foundation
import Logging
import UV

@main
struct DataStreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "datastream",
        abstract: "A high-concurrency file receiver on libuv, and its sender.",
        subcommands: [Serve.self, Send.self])
}

/// Reads a `--log-level` value.
extension Logger.Level: @retroactive ExpressibleByArgument {}

func die(_ message: String) -> Never {
    FileHandle.standardError.write(Data("datastream: \(message)\n".utf8))
    exit(1)
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Receive uploads (seed and native protocols) on one event loop.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "TCP port (0 picks a free one and prints it).") var port = 9000
    @Option(help: "Directory to store uploads in (created if missing).") var dir = "./received"
    @Option(help: "Require native clients to authenticate with this token.") var token: String?
    @Flag(help: "fsync each file before it is put into place, and the directory after (an acknowledged upload survives a power cut).") var fsync = false
    @Option(help: "Largest file accepted, in bytes.") var maxFileSize: UInt64 = 1 << 40
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel: Logger.Level = .info
    @Option(help: "UDP port (default: the TCP port's number).") var udpPort: Int?
    @Flag(help: "Do not receive UDP.") var noUdp = false
    @Option(help: "UDP socket receive buffer to ask for, in bytes (past rmem_max when run as root).") var udpReceiveBuffer: Int32 = 32 << 20
    @Option(help: "Seconds without a datagram before a UDP session is closed (native partials stay resumable).") var udpIdleTimeout: Double = 30
    @Flag(help: "Do not let the kernel coalesce UDP datagrams into one receive (UDP_GRO).") var noUdpOffload = false

    func run() throws {
        var configuration = Server.Configuration()
        configuration.udpEnabled = !noUdp
        configuration.udpPort = udpPort
        configuration.udpReceiveBuffer = udpReceiveBuffer
        configuration.udpIdleTimeout = udpIdleTimeout
        configuration.udpReceiveOffload = !noUdpOffload
        configuration.host = host
        configuration.port = port
        configuration.directory = dir
        configuration.token = token
        configuration.fsync = fsync
        configuration.maxFileSize = maxFileSize
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let loop: Loop
        do { loop = try Loop() } catch { die("\(error)") }
        let server: Server
        do {
            server = try Server(loop: loop, configuration: configuration, logger: Logger(label: "datastream"))
        } catch { die("\(error)") }
        let address: SocketAddress
        do { address = try server.start() } catch { die("\(error)") }
        print("listening tcp \(address)")
        if let udp = server.udpAddress {
            print("listening udp \(udp)")
            Logger(label: "datastream").info("udp receive buffer: kernel granted \(server.udpReceiveBufferGranted) bytes (getsockopt); receive offload \(server.udpReceiveOffloadEnabled ? "on" : "off")")
        }
        fflush(stdout)

        // A parent may have spawned us with these signals blocked (Foundation's Process does):
        // unblock them, or SIGINT/SIGTERM would never reach the loop.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGINT)
        sigaddset(&unblock, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        var signals: [UV.Signal] = []
        var stopping = false
        for signum in [SIGINT, SIGTERM] {
            do {
                let s = try UV.Signal(loop: loop)
                try s.start(signum) { _ in
                    if stopping { Glibc.exit(130) } // a second signal: leave at once
                    stopping = true
                    server.stop {
                        for s in signals { s.close() }
                    }
                }
                signals.append(s)
            } catch { die("\(error)") }
        }
        loop.run()
        let s = server.statistics
        FileHandle.standardError.write(Data("datastream: stopped; \(s.uploadsStored) uploads stored, \(s.uploadsFailed) failed, \(s.connectionsAccepted) connections\n".utf8))
        try? loop.close()
    }
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send files to a DataStream receiver (native protocol: several files on one connection, resume, digests).")

    @Argument(help: "Files to send.") var files: [String]
    @Option(help: "Receiver as HOST:PORT.") var to: String
    @Option(help: "Token, if the receiver requires one.") var token: String?
    @Flag(help: "Print one JSON object with the outcome of every file.") var json = false
    @Flag(help: "Speak the seed protocol (size digits, then bytes; one connection per file).") var seedProtocol = false
    @Option(help: "Digest: xxh3-128 or sha256.") var digest = "xxh3-128"
    @Flag(help: "Send over UDP: native reliable UDP, or the seed's UDP client with --seed-protocol.") var udp = false
    @Option(help: "UDP: payload bytes per datagram (512-16384; 1200 is safe on the internet, 8192 suits loopback and jumbo frames).") var chunkSize = 1200
    @Option(help: "UDP: cap on the sending rate in MB/s (default: none; the rate is found by probing).") var maxRate: Double?
    @Option(help: "UDP seed protocol: pause after each datagram, in milliseconds (the seed client's is 1).") var seedPause: Double = 1

    func run() throws {
        guard let colon = to.lastIndex(of: ":"), let port = Int(to[to.index(after: colon)...]) else {
            die("--to must be HOST:PORT, got \(to)")
        }
        let host = String(to[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard let algorithm = DigestAlgorithm(name: digest) else { die("unknown digest \(digest) (xxh3-128 or sha256)") }
        var options = Sender.Options(host: host, port: port)
        options.token = token
        options.seedProtocol = seedProtocol
        options.digest = algorithm

        guard (UDPWire.minimumChunkSize...UDPWire.maximumChunkSize).contains(chunkSize) else {
            die("--chunk-size must be between \(UDPWire.minimumChunkSize) and \(UDPWire.maximumChunkSize), got \(chunkSize)")
        }
        if let maxRate, maxRate <= 0 { die("--max-rate must be positive") }
        let loop: Loop
        do { loop = try Loop() } catch { die("\(error)") }
        let sendFiles: (@escaping ([Sender.Outcome]) -> Void) -> Void
        let sent: () -> UInt64
        var udpStatistics: () -> UDPSender.TransferStatistics? = { nil }
        if udp {
            var u = UDPSender.Options(host: host, port: port)
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
                let resumed = r.resumedFrom > 0 ? " (resumed at \(r.resumedFrom))" : ""
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
