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

    /// A worker's slot, from its command line (`--worker-slot N`).
    private func slot(of pid: Int32) -> Int? {
        guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        let arguments = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard let at = arguments.firstIndex(of: "--worker-slot"), at + 1 < arguments.count else { return nil }
        return Int(arguments[at + 1])
    }

    /// GET /metrics on a connection of its own (so either worker may answer).
    private func metrics(port: Int) -> [UInt8] {
        guard let c = try? BlockingClient(port: port) else { return [] }
        c.send(Array("GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".utf8))
        return c.readUntilEOF() ?? []
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
        let victim = try #require(first.first { slot(of: $0) == 1 })
        kill(victim, SIGKILL)
        #expect(server.waitForLog("worker 1 restarted (1 restarts so far)"))
        // Once it listens: a UDP upload begun before would have its source's datagrams moved to
        // it when it binds the port (the kernel's hash spans the sockets bound).
        #expect(server.waitForLog("worker 1 listens again"))
        let now = try #require(workers(of: server, count: 2, excluding: [victim]))
        #expect(Set(now).intersection(first) == Set(first).subtracting([victim]))
        try uploadAndVerify(server, .seed, uploads: 40, concurrency: 16, seed: 35)
        try uploadAndVerify(server, .udpNative, uploads: 24, concurrency: 12, seed: 36)

        // /metrics counts every worker's uploads, whichever worker answers (the replaced one's
        // included: its successor goes on from what it left). A scrape is one connection.
        let stored = [("seed-tcp", 100), ("tcp", 60), ("udp", 72), ("seed-udp", 16)]
        for _ in 0..<4 {
            #expect(server.eventually {
                let text = String(decoding: metrics(port: server.port), as: UTF8.self)
                return stored.allSatisfy { text.contains("datastream_uploads_stored_total{transport=\"\($0.0)\"} \($0.1)\n") }
            }, "\(String(decoding: metrics(port: server.port), as: UTF8.self))")
        }

        // SIGTERM drains both workers; the supervisor exits 0 once they have ended, with a
        // line that adds up every worker's (the first, killed, one's too).
        let stopped = try #require(server.stop(signal: SIGTERM))
        #expect(stopped.status == 0, "\(stopped.log.suffix(4000))")
        #expect(stopped.log.components(separatedBy: "datastream: drained;").count - 1 == 2, "\(stopped.log)")
        #expect(stopped.log.contains("supervisor stopped; 2 workers, 1 restarts; all of them: 248 uploads stored, 0 failed"), "\(stopped.log)")
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
