import DataStream
import DataStreamCore
import Foundation
import Testing
import UV

/// A seed-protocol upload on a client loop, as the seed's client: writes the digits and the
/// bytes, closes its sending side, then waits for the server to close the connection (which it
/// does once the file is stored). The half-close matters for files that begin with digits:
/// their framing is only decided at the client's end of stream.
final class LoopSeedUpload: TCPStreamReader {
    let index: Int
    let data: [UInt8]
    var stream: TCPStream?
    var finished = false
    var stage = "connecting"
    var failure: String?
    let scratch: UnsafeMutableRawBufferPointer
    let onDone: () -> Void

    /// The size digits and the bytes, framed before any connection starts (so a slow debug
    /// build spends that time before the server's clocks run, not between connect and write).
    let framed: [UInt8]

    init(index: Int, data: [UInt8], scratch: UnsafeMutableRawBufferPointer, onDone: @escaping () -> Void) {
        self.index = index
        self.data = data
        let digits = Array(String(data.count).utf8)
        framed = [UInt8](unsafeUninitializedCapacity: digits.count + data.count) { buffer, count in
            _ = UnsafeMutableRawBufferPointer(buffer).initializeMemory(as: UInt8.self, from: digits)
            data.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[digits.count...]).copyMemory(from: $0) }
            count = digits.count + data.count
        }
        self.scratch = scratch
        self.onDone = onDone
    }

    func start(loop: Loop, port: Int) throws {
        try TCPStream.connect(loop: loop, to: SocketAddress(host: "127.0.0.1", port: port)) { [self] r in
            switch r {
            case .failure(let e): done(e.description)
            case .success(let s):
                stream = s
                stage = "writing"
                do {
                    try s.startReading(self)
                    try s.write(framed) { [self] e in
                        stage = "awaiting close"
                        if let e { done(e.description); return }
                        do { try s.shutdown() } catch { done("\(error)") }
                    }
                } catch { done("\(error)") }
            }
        }
    }

    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? { scratch }

    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data: break
        case .endOfStream: done(nil)
        case .noBuffer: done("no buffer")
        case .failed(let e): done(e.description)
        }
    }

    private func done(_ failure: String?) {
        guard !finished else { return }
        finished = true
        self.failure = failure
        stream?.close()
        onDone()
    }
}

/// Runs one seed upload per payload, all at once, on a client loop in the calling thread, until
/// every one has finished or `timeout` ms have passed (then the unfinished ones are recorded as a
/// test issue, by stage, and closed). Returns the uploads with their outcomes.
func runSeedUploads(_ payloads: [[UInt8]], port: Int, timeout: UInt64 = 60_000) throws -> [LoopSeedUpload] {
    let loop = try Loop()
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    defer { scratch.deallocate() }
    var completed = 0
    let uploads = payloads.enumerated().map { i, data in
        LoopSeedUpload(index: i, data: data, scratch: scratch) { completed += 1 }
    }
    for upload in uploads { try upload.start(loop: loop, port: port) }
    let deadline = try UV.Timer(loop: loop)
    let check = try UV.Timer(loop: loop)
    try deadline.start(timeout: timeout) {
        let stages = Dictionary(grouping: uploads.filter { !$0.finished }, by: \.stage).mapValues(\.count)
        Issue.record("uploads did not finish within \(timeout) ms: \(completed) of \(uploads.count); unfinished by stage: \(stages)")
        for u in uploads where !u.finished { u.stream?.close() }
        deadline.close()
        check.close()
    }
    try check.start(timeout: 10, repeat: 10) {
        if completed == uploads.count {
            check.close()
            deadline.close()
        }
    }
    loop.run()
    try loop.close()
    return uploads
}

struct ConcurrencyTests {
    @Test func thousandConcurrentUploadsAreByteIdentical() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let n = 1000
        // Sizes vary from 1 KiB to about 200 KiB; contents derive from the index.
        let payloads = (0..<n).map { i in content(i, count: 1024 + (i * 7919) % (200 * 1024)) }
        let uploads = try runSeedUploads(payloads, port: server.port)
        #expect(uploads.allSatisfy { $0.finished && $0.failure == nil })
        let files = server.storedFiles()
        #expect(files.count == n)
        // Match each stored file to an upload by content.
        var byContent: [[UInt8]: Int] = [:]
        for (i, d) in payloads.enumerated() { byContent[d] = i }
        var matched = Set<Int>()
        for name in files {
            if let bytes = server.contents(name), let i = byContent[bytes] { matched.insert(i) }
        }
        #expect(matched.count == n)
        #expect(server.eventually { server.partials().isEmpty })
    }
}

struct BackpressureTests {
    /// With only two receive slabs (1 MiB) for the whole process and a 64 KiB per-connection
    /// mark, 60 concurrent uploads of up to 1.5 MiB must all wait for buffers, resume, and finish intact.
    @Test func tinyBudgetsStillDeliverEveryUploadIntact() throws {
        let server = try BackgroundServer {
            $0.processBufferBudget = 512 * 1024
            $0.connectionBufferLow = 16 * 1024
            $0.connectionBufferHigh = 64 * 1024
        }
        defer { server.stop() }
        let payloads = (0..<60).map { i in content(1000 + i, count: 100_000 + i * 25_000, seed: 7) }
        let uploads = try runSeedUploads(payloads, port: server.port)
        #expect(uploads.allSatisfy { $0.finished && $0.failure == nil })
        let stored = Set(server.storedFiles().compactMap { server.contents($0) })
        #expect(stored == Set(uploads.map(\.data)))
    }

    /// 300 small uploads at once against two receive slabs: most reads find no buffer and wait;
    /// each waiting connection is then read straight from its socket at the server's next turn
    /// of the loop (`readsAfterBufferWait`), not polled again, and every upload is stored intact.
    @Test func connectionsWaitingForBuffersReadStraightFromTheirSockets() throws {
        let server = try BackgroundServer { $0.processBufferBudget = 1 << 20 }
        let payloads = (0..<300).map { i in content(2000 + i, count: 30_000 + i * 97, seed: 11) }
        let uploads = try runSeedUploads(payloads, port: server.port)
        server.stop()
        #expect(uploads.allSatisfy { $0.finished && $0.failure == nil })
        let stored = Set(server.storedFiles().compactMap { server.contents($0) })
        #expect(stored == Set(payloads))
        #expect(server.statistics.readsAfterBufferWait > 0)
    }

    /// Small seed uploads completing together are stored in shared work items (group commit;
    /// with fsync, one directory fsync per batch): every one must still be stored intact,
    /// under its own name, with nothing left behind.
    @Test(arguments: [false, true])
    func manySmallUploadsAtOnceAreStoredIntact(fsync: Bool) throws {
        let server = try BackgroundServer { $0.fsync = fsync }
        defer { server.stop() }
        let payloads = (0..<300).map { i in content(5000 + i, count: 1 + (i * 997) % 8192, seed: 11) }
        let uploads = try runSeedUploads(payloads, port: server.port)
        #expect(uploads.allSatisfy { $0.finished && $0.failure == nil })
        #expect(server.eventually { server.storedFiles().count == payloads.count })
        let stored = server.storedFiles().compactMap { server.contents($0) }
        #expect(stored.count == payloads.count)
        #expect(Set(stored) == Set(payloads))
        #expect(server.partials().isEmpty)
    }

    @Test func fsyncModeStoresAndAnswers() throws {
        let server = try BackgroundServer { $0.fsync = true }
        defer { server.stop() }
        let a = content(77, count: 600_000)
        let outcomes = try sendFiles([writeTemporaryFile(a, name: "durable.bin")], port: server.port)
        #expect(outcomes.first?.succeeded == true)
        #expect(server.contents("durable.bin") == a)
        #expect(server.eventually { server.partials().isEmpty })
    }
}
