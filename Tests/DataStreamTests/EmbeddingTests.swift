import DataStream
import DataStreamCore
import Foundation
import Testing
import UV

/// The server on a `uv_loop_t` its host made and owns (issue 20), with upload events.
struct EmbeddingTests {
    final class EventRecorder: @unchecked Sendable {
        private let lock = NSLock()
        private var recorded: [UploadEvent] = []
        func append(_ event: UploadEvent) { lock.withLock { recorded.append(event) } }
        var events: [UploadEvent] { lock.withLock { recorded } }
        var stored: [StoredUpload] { events.compactMap { if case .stored(let s) = $0 { s } else { nil } } }
        var started: [UploadDescription] { events.compactMap { if case .started(let s) = $0 { s } else { nil } } }
        var failed: [(UploadDescription, String, Bool)] {
            events.compactMap { if case .failed(let u, let reason, _, let resumable) = $0 { (u, reason, resumable) } else { nil } }
        }
    }

    @Test func everyTransportReportsStartedAndStoredOnABorrowedLoop() throws {
        let recorder = EventRecorder()
        let server = try BackgroundServer(borrowedLoop: true, prepare: { $0.onEvent = recorder.append })
        let native = content(1, count: 300_000), nativeUDP = content(2, count: 200_000)
        let seed = content(3, count: 70_000), seedUDP = content(4, count: 5_000)
        let nativePath = writeTemporaryFile(native, name: "native.bin")
        let udpPath = writeTemporaryFile(nativeUDP, name: "over-udp.bin")
        #expect(try sendFiles([nativePath], port: server.port).allSatisfy(\.succeeded))
        #expect(try sendUDP([udpPath], port: server.port).0.allSatisfy(\.succeeded))
        let client = try BlockingClient(port: server.port)
        client.send(Array(String(seed.count).utf8) + seed)
        client.shutdownWrite()
        #expect(client.readUntilEOF() != nil)
        try seedUDPUpload(seedUDP, port: server.port)
        let http = content(5, count: 90_000)
        let put = try BlockingClient(port: server.port)
        put.send(Array("PUT /over-http.bin HTTP/1.1\r\nContent-Length: \(http.count)\r\nConnection: close\r\n\r\n".utf8) + http)
        #expect(String(decoding: put.readUntilEOF() ?? [], as: UTF8.self).hasPrefix("HTTP/1.1 201 "))
        let page = content(6, count: 150_000)
        let ws = try BlockingClient(port: server.port)
        #expect(ws.openWebSocket()?.contains(#""type":"hello""#) == true)
        #expect(ws.uploadOverWebSocket(page, name: "over-websocket.bin")?.contains(#""type":"stored""#) == true)
        #expect(waitUntil { recorder.stored.count == 6 })
        server.stop()
        #expect(server.loopClosedCleanly, "every handle the server opened is closed: uv_loop_close succeeds")

        let byTransport = Dictionary(uniqueKeysWithValues: recorder.stored.map { ($0.upload.transport, $0) })
        #expect(Set(byTransport.keys) == Set(UploadTransport.allCases))
        let expected: [UploadTransport: [UInt8]] = [.tcp: native, .udp: nativeUDP, .seedTCP: seed, .seedUDP: seedUDP, .http: http, .webSocket: page]
        for (transport, stored) in byTransport {
            #expect(stored.path == server.directory + "/" + stored.storedName)
            #expect(FileManager.default.contents(atPath: stored.path).map(Array.init) == expected[transport], "\(transport)")
            #expect(stored.upload.size == UInt64(expected[transport]!.count))
            #expect(stored.upload.peer.hasPrefix("127.0.0.1:"))
        }
        #expect(byTransport[.tcp]?.digest == xxh3(native) && byTransport[.tcp]?.digestAlgorithm == "xxh3-128")
        #expect(byTransport[.udp]?.digest == xxh3(nativeUDP))
        #expect(byTransport[.tcp]?.upload.clientName == "native.bin" && byTransport[.udp]?.upload.clientName == "over-udp.bin")
        #expect(byTransport[.seedTCP]?.digest == [] && byTransport[.seedTCP]?.digestAlgorithm == nil)
        // Each upload started once, before it was stored.
        #expect(recorder.started.map(\.transport).sorted { $0.rawValue < $1.rawValue } == UploadTransport.allCases)
        for s in recorder.stored {
            let startedAt = recorder.events.firstIndex(of: .started(s.upload))
            let storedAt = recorder.events.firstIndex(of: .stored(s))
            #expect(startedAt != nil && startedAt! < storedAt!, "\(s.upload.transport)")
        }
        #expect(recorder.failed.isEmpty)
    }

    @Test func brokenUploadsReportFailedWithTheReasonAndWhetherTheyResume() throws {
        let recorder = EventRecorder()
        let server = try BackgroundServer(borrowedLoop: true, prepare: { $0.onEvent = recorder.append })
        // A seed upload that stops short.
        let short = try BlockingClient(port: server.port)
        short.send(Array("5000".utf8) + content(5, count: 1_000))
        short.shutdownWrite()
        #expect(short.readUntilEOF() != nil)
        // A native upload cut after some of its bytes: its partial stays for resume.
        let data = content(6, count: 100_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "cut.bin")
        do {
            let cut = try BlockingClient(port: server.port)
            try cut.handshake()
            #expect(try cut.announce(header) == 0)
            cut.send(Array(data[0..<40_000]))
            cut.shutdownWrite()
            _ = cut.readUntilEOF()
        }
        // A seed UDP upload with a datagram missing.
        try seedUDPUpload(content(7, count: 8_000), port: server.port, skipDatagram: 3)
        #expect(waitUntil { recorder.failed.count == 3 })
        server.stop()
        #expect(server.loopClosedCleanly)

        let failed = Dictionary(uniqueKeysWithValues: recorder.failed.map { ($0.0.transport, $0) })
        #expect(failed[.seedTCP]?.0.size == 5000 && failed[.seedTCP]?.2 == false)
        #expect(failed[.seedTCP]?.1.contains("1000") == true, "the reason says how much came: \(failed[.seedTCP]?.1 ?? "")")
        #expect(failed[.tcp]?.0.clientName == "cut.bin" && failed[.tcp]?.0.uploadID == "\(header.uploadID)")
        #expect(failed[.tcp]?.2 == true, "a native partial stays resumable")
        #expect(failed[.seedUDP]?.2 == false && failed[.seedUDP]?.0.size == 8_000)
        #expect(recorder.stored.isEmpty)
        #expect(server.storedFiles().isEmpty)
    }

    /// A digest mismatch is a failure; the event says whether bytes stay for resume, as the
    /// store decides (`MismatchedPartial`): wrong bytes added by a resume go and what was held
    /// before stays; a connection that added nothing before its wrong END leaves nothing.
    @Test func aDigestMismatchSaysWhetherAnythingStays() throws {
        let recorder = EventRecorder()
        let server = try BackgroundServer(borrowedLoop: true, prepare: { $0.onEvent = recorder.append })
        let data = content(12, count: 50_000)
        let header = FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "m.bin")
        /// Resumes `header`: sends the bytes from the offset held up to `upTo`, then a wrong END
        /// (or closes, without END). Returns the offset the server held.
        func attempt(upTo end: Int, wrongEnd: Bool) throws -> UInt64? {
            let client = try BlockingClient(port: server.port)
            try client.handshake()
            var offset: UInt64?
            _ = waitUntil { offset = try? client.announce(header); return offset != nil }
            guard let offset else { return nil }
            client.send(Array(data[Int(offset)..<end]))
            if wrongEnd {
                client.send(Wire.end(digest: [UInt8](repeating: 7, count: 16)))
                _ = try? client.result()  // the mismatch; the connection stays for more files
            } else {
                client.shutdownWrite()
                _ = client.readUntilEOF()
            }
            return offset
        }
        #expect(try attempt(upTo: 20_000, wrongEnd: false) == 0)
        #expect(waitUntil { recorder.failed.count == 1 })
        #expect(try attempt(upTo: 50_000, wrongEnd: true) == 20_000)
        #expect(waitUntil { recorder.failed.count == 2 })
        #expect(try attempt(upTo: 50_000, wrongEnd: false) == 20_000, "the wrong bytes went, the first 20,000 stayed")
        #expect(waitUntil { recorder.failed.count == 3 })
        #expect(try attempt(upTo: 50_000, wrongEnd: true) == 50_000)
        #expect(waitUntil { recorder.failed.count == 4 })
        server.stop()
        let resumable = recorder.failed.map(\.2)
        #expect(resumable == [true, true, true, false], "\(recorder.failed.map(\.1))")
        #expect(recorder.failed[1].1.contains("digest") && recorder.failed[3].1.contains("digest"))
        #expect(server.partials().isEmpty, "the last mismatch, which added nothing, deleted the partial")
        #expect(server.storedFiles().isEmpty)
    }
}

/// Options by flag name: the ranges the command line and the C API share.
struct ConfigurationOptionTests {
    @Test func everyOptionTakesItsDefaultAndRefusesNonsense() throws {
        var c = Server.Configuration()
        try c.set("max-file-size", "64MiB")
        try c.set("header-timeout", "2.5")
        try c.set("udp", "off")
        try c.set("port", "0")
        #expect(c.maxFileSize == 64 << 20 && c.headerTimeout == 2.5 && !c.udpEnabled && c.port == 0)
        for (name, bad) in [("port", "70000"), ("header-timeout", "inf"), ("max-file-size", "0"), ("fsync", "perhaps"),
                            ("udp-window", "1KiB"), ("max-connections", "0")] {
            #expect(throws: (any Error).self, "\(name) \(bad)") { try c.set(name, bad) }
        }
        #expect(throws: Server.Configuration.UnknownOption.self) { try c.set("colour", "blue") }
        #expect(Server.Configuration.optionNames.count == 36)
        try c.set("proxy-protocol", "127.0.0.1, 10.0.0.0/8,::1")
        #expect(c.proxyProtocolFrom == ["127.0.0.1", "10.0.0.0/8", "::1"])
        for bad in ["localhost", "10.0.0.0/33", "10.0.0.0/x", "::1/129"] {
            #expect(throws: (any Error).self, "\(bad)") { try c.set("proxy-protocol", bad) }
        }
        try c.set("http", "off")
        try c.set("max-http-head", "8KiB")
        #expect(!c.httpEnabled && c.maxHTTPHeadBytes == 8 << 10)
        #expect(throws: (any Error).self) { try c.set("max-http-head", "100") }
    }
}

/// A host that stops the server from inside an event (after the first file, at the first
/// failure, or as soon as an upload starts): every handle still closes.
struct StopFromEventTests {
    enum Upload: String, CaseIterable { case seed, native, udp, seedUDP, brokenSeed, cutNative }
    enum When: String, CaseIterable { case started, ended }

    @Test(arguments: Upload.allCases, When.allCases)
    func stopInsideAnEventClosesEverything(upload: Upload, when: When) throws {
        let recorder = EmbeddingTests.EventRecorder()
        let stopped = LockedFlag()
        let server = try BackgroundServer(borrowedLoop: true, prepare: { server in
            server.onEvent = { [unowned server] event in
                recorder.append(event)
                switch (event, when) {
                case (.started, .started), (.stored, .ended), (.failed, .ended): server.stop { stopped.set() }
                default: break
                }
            }
        })
        let data = content(11, count: 200_000)
        switch upload {
        case .seed, .brokenSeed:
            let client = try BlockingClient(port: server.port)
            client.send(Array(String(data.count).utf8) + (upload == .seed ? data : Array(data[0..<1000])))
            client.shutdownWrite()
            _ = client.readUntilEOF()
        case .native:
            _ = try sendFiles([writeTemporaryFile(data, name: "a.bin")], port: server.port)
        case .udp:
            _ = try sendUDP([writeTemporaryFile(data, name: "b.bin")], port: server.port) { $0.silenceTimeout = 2 }
        case .seedUDP:
            try seedUDPUpload(data, port: server.port)
        case .cutNative:
            let client = try BlockingClient(port: server.port)
            try client.handshake()
            _ = try? client.announce(FileHeader(uploadID: .random(), size: UInt64(data.count), digest: .xxh3_128, name: "cut.bin"))  // no answer when stopped at its start
            client.send(Array(data[0..<5000]))
            client.shutdownWrite()
            _ = client.readUntilEOF()
        }
        #expect(waitUntil { stopped.isSet })
        server.stop()
        #expect(server.loopClosedCleanly)
        #expect(server.storedFiles().count <= 1)
    }
}

final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
