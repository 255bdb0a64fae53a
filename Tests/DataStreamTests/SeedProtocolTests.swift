import DataStream
import DataStreamCore
import Foundation
import Testing
import UV

/// The seed's TCP client, unmodified: digits, then the bytes, then close.
struct SeedProtocolTests {
    @Test func seedClientUploadsTenMiBIn1024ByteWrites() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let data = content(1, count: 10 << 20)
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8))
        var offset = 0
        while offset < data.count {
            client.send(Array(data[offset..<min(offset + 1024, data.count)]))
            offset += 1024
        }
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil, "the server closes the connection once the file is stored")
        let files = server.storedFiles()
        #expect(files.count == 1)
        #expect(files.first?.hasPrefix("upload-") == true)
        #expect(server.contents(files[0]) == data)
        #expect(server.eventually { server.partials().isEmpty })
    }

    /// Small uploads (up to 64 KiB) are held in memory and stored in one work item, through a
    /// file without a name or a named partial, unless the small-upload budget is spent (then
    /// they stream like large ones): every path must store the same bytes.
    @Test(arguments: SmallUploadPath.allCases)
    func sizeAndDataInOneWriteAndFilesBeginningWithDigits(path: SmallUploadPath) throws {
        let server = try BackgroundServer(configure: path.configure)
        defer { server.stop() }
        let cases: [[UInt8]] = [
            Array("plain text".utf8),
            Array("12abc".utf8),                            // begins with digits
            Array("2024-11-23 log line\n".utf8),            // begins with digits, longer
            Array("123".utf8),                              // only digits
            [],                                              // empty file
            Array("7".utf8) + content(9, count: 100_000),   // digits then binary, large
            Array("8".utf8) + content(10, count: 65_535),   // digits then binary, exactly 64 KiB
        ]
        for data in cases {
            let client = try BlockingClient(port: server.port)
            client.send(Array(String(data.count).utf8) + data)
            client.shutdownWrite()
            #expect(client.readUntilEOF() != nil)
        }
        #expect(server.eventually { server.storedFiles().count == cases.count })
        let stored = Set(server.storedFiles().compactMap { server.contents($0) })
        #expect(stored == Set(cases))
    }

    /// The seed client killed mid-upload: it wrote its size alone, the server read it alone,
    /// and the file then stopped. A shorter split would fit these bytes ("25" + "h" as the file
    /// "5h"; "10250" + 1,024 bytes as a 1,025-byte file), but the read boundary says where the
    /// size ended, so nothing is stored (issue 21, item 3).
    @Test(arguments: SmallUploadPath.allCases)
    func aCutShortUploadWhoseSizeCameAloneIsNeverStored(path: SmallUploadPath) throws {
        let server = try BackgroundServer(configure: path.configure)
        defer { server.stop() }
        for (size, sent) in [("25", Array("h".utf8)), ("10250", Array("x".utf8) + content(11, count: 1023))] {
            let client = try BlockingClient(port: server.port)
            client.send(Array(size.utf8))
            #expect(waitUntil { server.hasRead(client) })
            client.send(sent)
            client.shutdownWrite()
            #expect(client.readUntilEOF() != nil, "the server closes a broken upload")
        }
        // The server goes on serving; only the whole upload is stored.
        let whole = Array("h".utf8) + content(12, count: 24)
        let client = try BlockingClient(port: server.port)
        client.send(Array("25".utf8))
        #expect(waitUntil { server.hasRead(client) })
        client.send(whole)
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { !server.storedFiles().isEmpty })
        #expect(server.storedFiles().map { server.contents($0)?.count ?? -1 } == [whole.count])
        #expect(server.storedFiles().map { server.contents($0) == whole } == [true])
        #expect(server.eventually { server.partials().isEmpty })
    }

    @Test(arguments: SmallUploadPath.allCases)
    func brokenUploadsNeverAppearUnderAFinalName(path: SmallUploadPath) throws {
        let server = try BackgroundServer(configure: path.configure)
        defer { server.stop() }
        // Closed before the declared size.
        var client = try BlockingClient(port: server.port)
        client.send(Array("1000".utf8) + content(2, count: 500))
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        // Bytes beyond the declared size.
        client = try BlockingClient(port: server.port)
        client.send(Array("3".utf8) + Array("abcdef".utf8))
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        // A size no split can satisfy.
        client = try BlockingClient(port: server.port)
        client.send(Array("99999999999999999999999".utf8))
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { server.partials().isEmpty })
        #expect(server.storedFiles().isEmpty)
        // And the server keeps serving.
        let ok = try BlockingClient(port: server.port)
        ok.send(Array("2hi".utf8))
        #expect(ok.readUntilEOF() != nil)
        #expect(server.storedFiles().count == 1)
    }

    /// A client that sent its whole upload before the server accepted it is served by the
    /// reads made at accept, whether it closed its side or not: stored byte-identical, and its
    /// connection never polled (`servedAtAccept`). A first client, half-sent, holds the server
    /// at its connection cap meanwhile; it is read at accept, then polled for the rest.
    @Test func uploadSentBeforeAcceptIsServedByReadsAtAccept() throws {
        let server = try BackgroundServer { $0.maxConnections = 1 }
        let first = content(80, count: 10_000), second = content(81, count: 4096), third = content(82, count: 3000)
        let slow = try BlockingClient(port: server.port)
        slow.send(Array(String(first.count).utf8) + Array(first[0..<5000]))
        // Accepted and read: the server is at its cap and stops accepting.
        #expect(waitUntil { server.hasRead(slow) })
        #expect(server.onLoop { $0.connectionCount == 1 && $0.statistics.acceptPauses == 1 })
        let early = try BlockingClient(port: server.port)  // waits in the kernel's backlog
        early.send(Array(String(second.count).utf8) + second)
        early.shutdownWrite()
        let open = try BlockingClient(port: server.port)  // the same, its side left open
        open.send(Array(String(third.count).utf8) + third)
        // Both wait, whole, in the kernel's backlog.
        #expect(waitUntil { (kernelQueuedBytes(serverPort: server.port, clientPort: early.localPort) ?? 0) >= String(second.count).utf8.count + second.count
            && (kernelQueuedBytes(serverPort: server.port, clientPort: open.localPort) ?? 0) >= String(third.count).utf8.count + third.count })
        slow.send(Array(first[5000...]))
        slow.shutdownWrite()
        #expect(slow.readUntilEOF() != nil)
        #expect(early.readUntilEOF() != nil)
        #expect(open.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().count == 3 })
        server.stop()
        #expect(Set(server.storedFiles().compactMap { server.contents($0) }) == [first, second, third])
        #expect(server.statistics.servedAtAccept == 2)
        #expect(server.statistics.readsWithoutPolling >= 2)
    }

    /// A generated name already taken (a restart in the same second finds the first uploads of
    /// the one before) gets the next free candidate, on every path to a final name: linked
    /// from a file without a name (by directory descriptor or path) or from a named partial.
    /// The files already there are never touched.
    @Test(arguments: SmallUploadPath.allCases)
    func takenGeneratedNamesGetTheNextFreeCandidate(path: SmallUploadPath) throws {
        let directory = BackgroundServer.temporaryDirectory()
        let now = Int(time(nil))
        var taken: [String] = []
        for second in (now - 1)...(now + 30) {
            let name = NamePolicy.seedUploadName(utcSeconds: second, counter: 1)
            taken += [name, NamePolicy.candidate(name, attempt: 1)]
        }
        for name in taken { #expect(FileManager.default.createFile(atPath: directory + "/" + name, contents: Data("old".utf8))) }
        let server = try BackgroundServer(directory: directory, configure: path.configure)
        defer { server.stop() }
        let data = Array("hello".utf8)
        let client = try BlockingClient(port: server.port)
        client.send(Array("5".utf8) + data)
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        #expect(server.eventually { server.storedFiles().count == taken.count + 1 })
        let new = Set(server.storedFiles()).subtracting(taken)
        #expect(new.count == 1)
        if let name = new.first {
            #expect(taken.contains { NamePolicy.candidate($0, attempt: 2) == name }, "stored as \(name)")
            #expect(server.contents(name) == data)
        }
        for name in taken { #expect(server.contents(name) == Array("old".utf8)) }
    }

    /// Once a seed upload has all its declared bytes the server stores it and closes without
    /// waiting for the client's end or reading further (docs/PROTOCOL.md 1.1), on every path
    /// to a final name: a client that keeps its side open sees the close, and its file is
    /// stored. Bytes it sends afterwards are never read; the next upload is served.
    @Test(arguments: SmallUploadPath.allCases)
    func completeUploadIsStoredAndClosedWhileTheClientKeepsItsSideOpen(path: SmallUploadPath) throws {
        let server = try BackgroundServer(configure: path.configure)
        defer { server.stop() }
        let data = content(30, count: 6000)
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(data.count).utf8) + data)
        #expect(client.readUntilEOF() == [], "closed by the server with the upload stored")
        client.send(Array("more".utf8))
        #expect(server.storedFiles().count == 1)
        #expect(server.contents(server.storedFiles()[0]) == data)
        let next = try BlockingClient(port: server.port)
        next.send(Array("2hi".utf8))
        #expect(next.readUntilEOF() == [])
        #expect(server.eventually { server.storedFiles().count == 2 })
    }

    @Test func senderSpeaksTheSeedProtocol() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let data = content(3, count: 777_777)
        let path = writeTemporaryFile(data, name: "seed.bin")
        let outcomes = try sendFiles([path], port: server.port, seed: true)
        #expect(outcomes.count == 1)
        #expect(outcomes[0].succeeded)
        #expect(server.eventually { server.storedFiles().count == 1 })
        #expect(server.contents(server.storedFiles()[0]) == data)
    }
}

/// The three ways a small seed upload can reach its final name.
enum SmallUploadPath: CaseIterable, Sendable {
    case unnamedFile, namedPartial, streaming, streamingNamed

    func configure(_ c: inout Server.Configuration) {
        switch self {
        case .unnamedFile: break
        case .namedPartial: c.unnamedSeedFiles = false
        case .streaming: c.smallUploadBudget = 0
        case .streamingNamed: c.smallUploadBudget = 0; c.unnamedSeedFiles = false
        }
    }
}

/// Small uploads one after another reuse the blocks that held the ones before: each file must
/// hold exactly its own bytes (none left over from a longer upload in the same block).
struct SmallUploadReuseTests {
    /// An upload that one read brought whole is stored from the receive slab it landed in,
    /// which it holds until stored. With room for two slabs only, 300 uploads one after another
    /// (each slab serves about 64 such reads) go through only if every upload gives its slab back.
    @Test func uploadsStoredFromTheReceiveSlabGiveItBack() throws {
        let server = try BackgroundServer { $0.processBufferBudget = 1 << 20 }
        defer { server.stop() }
        var sent: Set<[UInt8]> = []
        for i in 0..<300 {
            let data = content(1000 + i, count: 4096)
            let client = try BlockingClient(port: server.port)
            client.send(Array("4096".utf8) + data)
            client.shutdownWrite()
            #expect(client.readUntilEOF() != nil)
            sent.insert(data)
        }
        #expect(server.eventually { server.storedFiles().count == 300 })
        #expect(Set(server.storedFiles().compactMap { server.contents($0) }) == sent)
    }

    @Test func uploadsOfEverySizeClassInTurnStoreExactlyTheirBytes() throws {
        let server = try BackgroundServer()
        defer { server.stop() }
        let sizes = [4096, 1, 4095, 65_536, 8193, 0, 65_535, 3, 16_384, 4096]
        var sent: [[UInt8]] = []
        for (i, size) in sizes.enumerated() {
            let data = content(20 + i, count: size)
            let client = try BlockingClient(port: server.port)
            client.send(Array(String(size).utf8) + data)
            client.shutdownWrite()
            #expect(client.readUntilEOF() != nil, "stored before the close")
            sent.append(data)
        }
        #expect(server.eventually { server.storedFiles().count == sizes.count })
        let stored = server.storedFiles().compactMap { server.contents($0) }
        #expect(stored.map(\.count).sorted() == sizes.sorted())
        #expect(Set(stored) == Set(sent))
    }
}
