import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing

/// Graceful shutdown of `datastream serve` on SIGTERM: stop accepting, let uploads in progress
/// finish within `--drain-timeout`, cut the rest (native partials resumable), exit 0.
struct DrainShutdownTests {
    @Test func uploadsInProgressFinishAndIdleConnectionsAreClosed() throws {
        let server = try ServeProcess(arguments: ["--drain-timeout", "20", "--log-level", "notice"])
        let idle = try BlockingClient(port: server.port)
        try idle.handshake()
        let seedData = content(90, count: 300_000)
        let seed = try BlockingClient(port: server.port)
        seed.send(Array(String(seedData.count).utf8) + seedData[0..<100_000])
        let nativeData = content(91, count: 400_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(nativeData.count), digest: .xxh3_128, name: "native.bin")
        let native = try BlockingClient(port: server.port)
        try native.handshake()
        #expect(try native.announce(header) == 0)
        native.send(Array(nativeData[0..<150_000]))
        // Both uploads under way: the server has read everything sent so far.
        #expect(waitUntil { server.hasRead(seed) && server.hasRead(native) })

        kill(server.process.processIdentifier, SIGTERM)
        // The idle connection is told why and closed.
        let frame = idle.readFrame()
        #expect(frame?.type == .error)
        #expect(frame.map { Wire.decodeError($0.payload).code } == ProtocolError.shuttingDown.code)
        // No new connections.
        #expect(server.eventually { (try? BlockingClient(port: server.port)) == nil })
        // The uploads in progress finish.
        seed.send(Array(seedData[100_000...]))
        seed.shutdownWrite()
        #expect(seed.readUntilEOF() != nil)
        native.send(Array(nativeData[150_000...]))
        native.send(Wire.end(digest: Digests.compute(.xxh3_128, nativeData)))
        #expect(try native.result().status == .stored)

        let end = try #require(server.stop(signal: 0))  // already signalled: wait for the exit
        #expect(end.status == 0)
        #expect(end.log.contains("drained; 2 uploads were in progress, 2 stored while draining, 0 cut at the deadline and resumable, 0 seed uploads cut and lost"), "\(end.log)")
        #expect(server.storedFiles().count == 2)
        #expect(server.contents("native.bin") == nativeData)
        #expect(server.storedFiles().contains { server.contents($0) == seedData })
    }

    /// At the deadline what is left is cut: the native partial resumes on the next start, the
    /// seed upload is gone, and nothing incomplete has a final name.
    @Test func theDeadlineCutsWhatIsLeftAndNativeUploadsResume() throws {
        let directory = BackgroundServer.temporaryDirectory() + "/in"
        let server = try ServeProcess(directory: directory, arguments: ["--drain-timeout", "0.5", "--log-level", "notice"])
        let seed = try BlockingClient(port: server.port)
        seed.send(Array("300000".utf8) + content(92, count: 1000))
        let data = content(93, count: 500_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "cut.bin")
        let native = try BlockingClient(port: server.port)
        try native.handshake()
        #expect(try native.announce(header) == 0)
        native.send(Array(data[0..<200_000]))
        #expect(waitUntil { server.hasRead(seed) && server.hasRead(native) })
        let end = try #require(server.stop(signal: SIGTERM))
        #expect(end.status == 0)
        #expect(end.log.contains("drained; 2 uploads were in progress, 0 stored while draining, 1 cut at the deadline and resumable, 1 seed uploads cut and lost"), "\(end.log)")
        #expect(server.storedFiles().isEmpty)

        let again = try ServeProcess(directory: directory)
        let client = try BlockingClient(port: again.port)
        try client.handshake()
        #expect(try client.announce(header) == 200_000)
        client.send(Array(data[200_000...]))
        client.send(Wire.end(digest: Digests.compute(.xxh3_128, data)))
        #expect(try client.result().status == .stored)
        #expect(again.contents("cut.bin") == data)
        #expect(again.storedFiles() == ["cut.bin"])
        #expect(again.stop()?.status == 0)
    }

    /// A native UDP upload in progress finishes while the server drains.
    @Test func aUDPUploadInProgressFinishesWhileDraining() throws {
        let server = try ServeProcess(arguments: ["--drain-timeout", "20", "--log-level", "debug"], udp: true)
        let data = content(95, count: 8 << 20)
        let path = writeTemporaryFile(data, name: "udp-drain.bin")
        let sender = Process()
        sender.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        sender.arguments = ["send", path, "--to", "127.0.0.1:\(server.port)", "--udp", "--max-rate", "8"]  // about a second
        sender.standardOutput = FileHandle.nullDevice
        sender.standardError = FileHandle.nullDevice
        try sender.run()
        #expect(server.waitForLog("udp upload opened"))
        kill(server.process.processIdentifier, SIGTERM)
        sender.waitUntilExit()
        #expect(sender.terminationStatus == 0)
        let end = try #require(server.stop(signal: 0))
        #expect(end.status == 0)
        #expect(end.log.contains("drained; 1 uploads were in progress, 1 stored while draining, 0 cut"), "\(end.log)")
        #expect(server.contents("udp-drain.bin") == data)
    }

    /// Seed UDP while draining: an upload in progress goes on to its end and is stored; one
    /// that begins after the signal is refused, and the log says so (the protocol cannot).
    @Test func aSeedUDPUploadInProgressFinishesAndANewOneIsRefusedWhileDraining() throws {
        let server = try ServeProcess(arguments: ["--drain-timeout", "20", "--log-level", "debug"], udp: true)
        let data = content(96, count: 600 * 1024)
        let path = writeTemporaryFile(data, name: "seed-udp-drain.bin")
        let sender = Process()
        sender.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        sender.arguments = ["send", path, "--to", "127.0.0.1:\(server.port)", "--udp", "--seed-protocol"]  // 1 ms per datagram: about 0.6 s
        sender.standardOutput = FileHandle.nullDevice
        sender.standardError = FileHandle.nullDevice
        try sender.run()
        #expect(server.waitForLog("udp seed upload started"))
        kill(server.process.processIdentifier, SIGTERM)
        #expect(server.waitForLog("draining:"))
        // A new seed upload from another socket, after the signal.
        let late = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(late) }
        var address = loopbackAddress(port: server.port)
        for datagram in [Array("5".utf8), Array("hello".utf8), Array("EOF".utf8)] {
            _ = datagram.withUnsafeBytes { bytes in
                withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(late, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            }
        }
        sender.waitUntilExit()
        #expect(sender.terminationStatus == 0)
        let end = try #require(server.stop(signal: 0))
        #expect(end.status == 0)
        #expect(end.log.contains("udp seed upload refused: the server is shutting down"), "\(end.log)")
        #expect(end.log.contains("1 stored while draining"), "\(end.log)")
        let stored = server.storedFiles()
        #expect(stored.count == 1, "\(stored)")
        #expect(stored.first.flatMap { server.contents($0) } == data)
    }

    @Test func aSecondSignalExitsAtOnce() throws {
        let server = try ServeProcess(arguments: ["--drain-timeout", "60"])
        let native = try BlockingClient(port: server.port)
        try native.handshake()
        let header = FileHeader(uploadID: .random(), size: 1_000_000, digest: .xxh3_128, name: "slow.bin")
        #expect(try native.announce(header) == 0)
        native.send(content(94, count: 1000))
        #expect(waitUntil { server.hasRead(native) })
        kill(server.process.processIdentifier, SIGTERM)
        #expect(server.waitForLog("draining:"))
        #expect(server.isRunning, "exited before the drain deadline")
        let end = try #require(server.stop(signal: SIGINT))
        #expect(end.status == 130)
        #expect(!end.log.contains("drained;"), "the second signal waited for the drain: \(end.log)")
        #expect(server.storedFiles().isEmpty)
    }
}
