import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing
import UV

/// Large uploads (the lifecycle machine decides which: `ConnectionLifecycle.shouldDrainSocket`) are moved from the socket
/// straight into the file on the threadpool. Each test checks that the drain really ran
/// (`uploadsDrained`, `bytesDrained`) as well as what was stored.
struct DrainTests {
    @Test func largeSeedUploadIsDrainedAndByteIdentical() throws {
        let server = try BackgroundServer()
        let data = content(60, count: 24 << 20)
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8) + data, chunk: 300_000)
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().count == 1 })
        server.stop()
        #expect(server.contents(server.storedFiles()[0]) == data)
        #expect(server.partials().isEmpty)
        #expect(server.statistics.uploadsDrained == 1)
        #expect(server.statistics.bytesDrained >= UInt64(data.count) - (2 << 20), "drained \(server.statistics.bytesDrained)")
    }

    /// A seed upload's drain splices (no digest to compute), so every mid-sized upload in flight
    /// gets one, not just the first few: eight 1 MiB uploads held half-sent are all drained at
    /// once, then finish byte-identical.
    @Test func everyMidSizedSeedUploadInFlightIsDrained() throws {
        let server = try BackgroundServer()
        let uploads = (0..<8).map { content(70 + $0, count: 1 << 20) }
        let clients = try uploads.map { data in
            let client = try BlockingClient(port: server.port)
            client.send(Array(String(data.count).utf8) + Array(data[0..<(512 << 10)]))
            return client
        }
        // The partial files open and the drains start, each waiting for bytes.
        #expect(server.waitForStatistics { $0.uploadsDrained == 8 })
        for (client, data) in zip(clients, uploads) {
            client.send(Array(data[(512 << 10)...]))
            client.shutdownWrite()
        }
        for client in clients { #expect(client.readUntilEOF() != nil) }
        #expect(server.eventually { server.storedFiles().count == 8 })
        server.stop()
        let stored = Set(server.storedFiles().compactMap { server.contents($0) })
        #expect(stored == Set(uploads))
        #expect(server.partials().isEmpty)
        #expect(server.statistics.uploadsDrained == 8)
        #expect(server.statistics.peakDrainsRunning == 8, "at most \(server.statistics.peakDrainsRunning) drains at once")
    }

    /// The size field swallowed the file's leading digits: the drain takes the longest reading
    /// and the end of stream decides, as on the slab path.
    @Test func largeSeedFileBeginningWithDigits() throws {
        let server = try BackgroundServer()
        let data = Array("4096 lines follow\n".utf8) + content(61, count: 9 << 20)
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8) + data)
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().count == 1 })
        server.stop()
        #expect(server.contents(server.storedFiles()[0]) == data)
        #expect(server.statistics.uploadsDrained == 1)
    }

    @Test func drainedSeedUploadWithTrailingBytesOrCutShortIsNeverStored() throws {
        let server = try BackgroundServer()
        // Bytes past the declared size: they stay in the socket for the normal reader to refuse.
        var client = try BlockingClient(port: server.port)
        let data = content(62, count: 8 << 20)
        client.send(Array(String(data.count).utf8) + data + Array("extra".utf8))
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        // Closed 3 MiB early.
        client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8) + Array(data[0..<(5 << 20)]))
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { server.partials().isEmpty })
        server.stop()
        #expect(server.storedFiles().isEmpty)
        #expect(server.statistics.uploadsDrained == 2)
        #expect(server.statistics.uploadsFailed == 2)
    }

    /// Native: the digest is computed by the drain's work items; a dropped connection leaves a
    /// resumable partial whose resume completes byte for byte.
    @Test func nativeDrainedUploadDropsAndResumes() throws {
        let server = try BackgroundServer()
        let data = content(63, count: 16 << 20)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "drained.bin")
        do {
            let first = try BlockingClient(port: server.port)
            try first.handshake()
            #expect(try first.announce(header) == 0)
            first.send(Array(data[0..<(9 << 20)]))
            #expect(waitUntil { server.hasRead(first) })
        } // dropped here
        let resumed = server.resume(header, data)
        let offset = resumed?.offset ?? 0
        server.stop()
        #expect(resumed?.status == .stored)
        #expect(offset > (4 << 20) && offset <= (9 << 20), "resumed at \(offset)")
        #expect(server.contents("drained.bin") == data)
        #expect(server.partials().isEmpty)
        #expect(server.statistics.uploadsDrained == 2)
    }

    /// A wrong digest over drained bytes is refused like any other.
    @Test func nativeDrainedUploadWithWrongDigestIsRefused() throws {
        let server = try BackgroundServer()
        let data = content(64, count: 6 << 20)
        let c = try BlockingClient(port: server.port)
        try c.handshake()
        #expect(try c.announce(FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "bad.bin")) == 0)
        c.send(data)
        c.send(Wire.end(digest: Digests.compute(.xxh3_128, data.reversed())))
        #expect(try c.result().status != .stored)
        server.stop()
        #expect(server.storedFiles().isEmpty)
        #expect(server.statistics.uploadsDrained == 1)
    }

    /// Stopping the server while a drain's work item may be running: the stop waits for it,
    /// the loop closes cleanly and the seed partial is gone.
    @Test func serverStopsWhileDraining() throws {
        let server = try BackgroundServer()
        let client = try BlockingClient(port: server.port)
        client.send(Array("104857600".utf8) + content(65, count: 12 << 20))
        #expect(server.waitForStatistics { $0.uploadsDrained == 1 })
        server.stop()
        #expect(server.loopClosedCleanly)
        #expect(server.storedFiles().isEmpty)
        #expect(server.partials().isEmpty)
        #expect(server.statistics.uploadsDrained == 1)
    }
}
