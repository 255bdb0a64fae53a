import DataStream
import DataStreamBench
import DataStreamCore
import Foundation
import Glibc
import Testing

/// `serve --workers 2` as a user runs it: a supervisor process and two workers sharing the TCP
/// and UDP ports (SO_REUSEPORT).
struct WorkersTests {
    /// The supervisor's children (its workers), from /proc, waiting (bounded) for `count`.
    private func workers(of server: ServeProcess, count: Int, excluding gone: Set<Int32> = []) -> [Int32]? {
        var found: [Int32] = []
        let pid = server.process.processIdentifier
        let ok = waitUntil(15) {
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
            found = text.split(separator: " ").compactMap { Int32($0) }.filter { !gone.contains($0) }
            return found.count == count
        }
        return ok ? found : nil
    }

    /// Uploads over `wire`, several at once, every byte checked in the target directory.
    private func uploadAndVerify(_ server: ServeProcess, _ wire: LoadGenerator.WireProtocol, uploads: Int, concurrency: Int, seed: UInt64) throws {
        let before = server.storedFiles().count
        let sizes = try SizeDistribution(parsing: wire == .udpSeed ? "1KiB-40KiB" : "1KiB-300KiB")
        let (report, content) = try runBench(port: server.port) {
            $0.wireProtocol = wire
            $0.uploads = UInt64(uploads)
            $0.concurrency = concurrency
            $0.sizes = sizes
            $0.seed = seed
        }
        #expect(report.completed == UInt64(uploads), "\(wire): \(report.sampleMessages)")
        // The seed's UDP framing has no acknowledgement: wait for the files themselves.
        #expect(server.eventually { server.storedFiles().count == before + uploads }, "\(wire)")
        let v = BenchVerifier.verify(directory: server.directory, content: content, sizes: sizes, confirmed: report.succeeded)
        #expect(v.verified == uploads, "\(wire): \(v.mismatches) mismatched, missing \(v.missing)")
    }

    @Test func twoWorkersServeEveryProtocolAKilledOneIsReplacedAndSIGTERMDrainsBoth() throws {
        let server = try ServeProcess(arguments: ["--workers", "2", "--log-level", "notice"], udp: true)
        let first = try #require(workers(of: server, count: 2))

        // TCP seed and native; UDP native from 24 sources at once and seed from 8: each source's
        // datagrams must all reach the one worker its first went to.
        try uploadAndVerify(server, .seed, uploads: 60, concurrency: 24, seed: 31)
        try uploadAndVerify(server, .native, uploads: 60, concurrency: 24, seed: 32)
        try uploadAndVerify(server, .udpNative, uploads: 48, concurrency: 24, seed: 33)
        try uploadAndVerify(server, .udpSeed, uploads: 16, concurrency: 8, seed: 34)

        // kill -9 of a worker: the supervisor starts another, and the server serves on.
        kill(first[0], SIGKILL)
        #expect(server.waitForLog("restarted (1 restarts so far)"))
        let now = try #require(workers(of: server, count: 2, excluding: [first[0]]))
        #expect(now.contains(first[1]) && !now.contains(first[0]))
        try uploadAndVerify(server, .seed, uploads: 40, concurrency: 16, seed: 35)
        try uploadAndVerify(server, .udpNative, uploads: 24, concurrency: 12, seed: 36)

        // SIGTERM drains both workers; the supervisor exits 0 once they have ended.
        let stopped = try #require(server.stop(signal: SIGTERM))
        #expect(stopped.status == 0)
        #expect(stopped.log.components(separatedBy: "datastream: drained;").count - 1 == 2, "\(stopped.log)")
        #expect(stopped.log.contains("supervisor stopped; 2 workers, 1 restarts"))
        #expect(now.allSatisfy { kill($0, 0) != 0 }, "no worker outlives the supervisor")
    }

    /// A port taken by a socket that does not share it fails the server before any worker
    /// starts: no listening line, exit status 1.
    @Test func aPortInUseFailsTheServer() throws {
        let taken = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(taken) }
        var address = loopbackAddress()
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(taken, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(taken, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))
        #expect(throws: TestError.self) {
            _ = try ServeProcess(arguments: ["--workers", "2", "--udp-port", "\(port)"], udp: true)
        }
    }
}
