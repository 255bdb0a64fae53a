import DataStream
import DataStreamCore
import Foundation
import Glibc
import Testing

/// HTTP on the TCP port, over real sockets: curl as the client where users would use it, a raw
/// socket where the test needs bytes curl would never send.
struct HTTPTests {
    /// Runs curl; returns its exit status and standard output.
    func curl(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-sS", "--max-time", "30"] + arguments
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Sends `request` on a fresh connection, half-closes, and returns all the server sent.
    func exchange(_ port: Int, _ request: [UInt8], halfClose: Bool = true) throws -> String {
        let c = try BlockingClient(port: port)
        c.send(request)
        if halfClose { c.shutdownWrite() }
        return String(decoding: c.readUntilEOF() ?? [], as: UTF8.self)
    }

    /// The status codes of the responses in `text`, in order.
    func statuses(_ text: String) -> [Int] {
        text.components(separatedBy: "HTTP/1.1 ").dropFirst().compactMap { Int($0.prefix(3)) }
    }

    @Test func curlPutStoresTheFileByteForByteAndNeverReplacesOne() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let data = content(1, count: 3 << 20)
        let path = writeTemporaryFile(data, name: "report v1.bin")
        let first = try curl(["-T", path, "http://127.0.0.1:\(server.port)/"])
        #expect(first.status == 0)
        #expect(first.output == "{\"name\":\"report v1.bin\",\"size\":\(data.count)}\n")
        let second = try curl(["-T", path, "-w", "%{http_code} %header{location}", "http://127.0.0.1:\(server.port)/"])
        #expect(second.output.hasSuffix("201 /report%20v1-1.bin"))
        #expect(server.storedFiles() == ["report v1-1.bin", "report v1.bin"])
        #expect(server.contents("report v1.bin") == data)
        #expect(server.contents("report v1-1.bin") == data)
        #expect(server.partials().isEmpty)
    }

    @Test func withATokenCurlUploadsOnlyWithTheBearerHeader() throws {
        let server = try BackgroundServer { $0.udpEnabled = false; $0.token = "t0k3n" }
        defer { server.stop() }
        let data = content(2, count: 2 << 20)
        let path = writeTemporaryFile(data, name: "guarded.bin")
        let url = "http://127.0.0.1:\(server.port)/"
        let refused = try curl(["-T", path, "-w", "%{http_code}", "-o", "/dev/null", url])
        #expect(refused.output == "401")
        let form = try curl(["-F", "f=@\(path)", "-w", "%{http_code}", "-o", "/dev/null", url])
        #expect(form.output == "401")
        let wrong = try curl(["-T", path, "-H", "Authorization: Bearer t0k3m", "-w", "%{http_code}", "-o", "/dev/null", url])
        #expect(wrong.output == "401")
        #expect(server.storedFiles().isEmpty)
        let right = try curl(["-T", path, "-H", "Authorization: Bearer t0k3n", url])
        #expect(right.output == "{\"name\":\"guarded.bin\",\"size\":\(data.count)}\n")
        #expect(server.contents("guarded.bin") == data)
        #expect(statuses(try exchange(server.port, Array("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))) == [200])
    }

    @Test func thePageIsServedWithItsPolicy() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let page = try exchange(server.port, Array("GET / HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))
        #expect(statuses(page) == [200])
        #expect(page.contains("Content-Type: text/html; charset=utf-8"))
        #expect(page.contains("Content-Security-Policy: default-src 'none'; script-src 'sha256-"))
        #expect(page.contains("<input id=\"files\" type=\"file\" multiple>"))
    }

    @Test func aLargeBodyIsFollowedByTheNextPipelinedRequest() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let data = content(10, count: 5 << 20)
        let c = try BlockingClient(port: server.port)
        c.send(Array("PUT /big.bin HTTP/1.1\r\nContent-Length: \(data.count)\r\n\r\n".utf8) + data + Array("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))
        c.shutdownWrite()
        let text = String(decoding: c.readUntilEOF() ?? [], as: UTF8.self)
        #expect(statuses(text) == [201, 200])
        #expect(server.contents("big.bin") == data)
    }

    @Test func aLargeBodyCutShortIsNeverStoredAndStopCloses() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        let c = try BlockingClient(port: server.port)
        c.send(Array("PUT /cut-big.bin HTTP/1.1\r\nContent-Length: \(20 << 20)\r\n\r\n".utf8) + content(11, count: 6 << 20))
        #expect(waitUntil { server.hasRead(c) })
        // One client leaves mid-body; another is mid-body when the server stops.
        c.shutdownWrite()
        _ = c.readUntilEOF()
        #expect(server.waitForStatistics { $0.uploadsFailed == 1 })
        let d = try BlockingClient(port: server.port)
        d.send(Array("PUT /stopped.bin HTTP/1.1\r\nContent-Length: \(20 << 20)\r\n\r\n".utf8) + content(12, count: 3 << 20))
        #expect(waitUntil { server.hasRead(d) })
        server.stop()
        #expect(server.loopClosedCleanly)
        #expect(server.storedFiles().isEmpty)
        #expect(server.partials().isEmpty)
    }

    @Test func chunkedBodiesAreStoredDecoded() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let data = content(2, count: 700_001)
        let path = writeTemporaryFile(data, name: "c.bin")
        let r = try curl(["-H", "Transfer-Encoding: chunked", "-T", path, "-w", " %{http_code}", "http://127.0.0.1:\(server.port)/chunked.bin"])
        #expect(r.output.hasSuffix(" 201"))
        #expect(server.contents("chunked.bin") == data)
    }

    @Test func expectContinueGetsContinueOnlyOnceTheFileIsOpen() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let c = try BlockingClient(port: server.port)
        c.send(Array("PUT /e.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".utf8))
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = recv(c.fd, &buffer, buffer.count, 0)
        #expect(String(decoding: buffer[0..<max(n, 0)], as: UTF8.self) == "HTTP/1.1 100 Continue\r\n\r\n")
        c.send(Array("hello".utf8))
        c.shutdownWrite()
        let rest = String(decoding: c.readUntilEOF() ?? [], as: UTF8.self)
        #expect(statuses(rest) == [201])
        #expect(server.contents("e.txt") == Array("hello".utf8))
    }

    @Test func pipelinedRequestsAreAnsweredInOrderOnOneConnection() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let request = "GET /healthz HTTP/1.1\r\n\r\nPUT /one.txt HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" +
            "PUT /two.txt HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n" +
            "HEAD /readyz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n"
        let text = try exchange(server.port, Array(request.utf8), halfClose: false)
        #expect(statuses(text) == [200, 201, 201, 200, 404])
        #expect(text.contains("{\"name\":\"one.txt\",\"size\":3}"))
        #expect(text.hasSuffix("\"status\":404}\n"))
        #expect(server.contents("one.txt") == Array("abc".utf8))
        #expect(server.contents("two.txt") == Array("de".utf8))
        #expect(server.onLoop { $0.statistics.httpConnections } == 1)
    }

    @Test func aLengthOverTheLimitIs413AndNothingIsStored() throws {
        let server = try BackgroundServer { $0.udpEnabled = false; $0.maxFileSize = 1000 }
        defer { server.stop() }
        let big = writeTemporaryFile(content(3, count: 5000), name: "big.bin")
        let known = try curl(["-T", big, "-w", " %{http_code}", "http://127.0.0.1:\(server.port)/"])
        #expect(known.output.hasSuffix(" 413"))
        #expect(known.output.contains("exceeds the limit of 1000"))
        let chunked = try curl(["-H", "Transfer-Encoding: chunked", "-T", big, "-w", " %{http_code}", "http://127.0.0.1:\(server.port)/c.bin"])
        #expect(chunked.output.hasSuffix(" 413"))
        #expect(server.storedFiles().isEmpty)
        #expect(server.partials().isEmpty)
        #expect(try curl(["-w", "%{http_code}", "-o", "/dev/null", "http://127.0.0.1:\(server.port)/healthz"]).output == "200")
    }

    @Test func noRoomIs507() throws {
        let fs = try SmallFileSystem(megabytes: 2)
        let server = try BackgroundServer(directory: fs.directory) { $0.minFreeSpace = 0; $0.udpEnabled = false }
        defer { server.stop() }
        let path = writeTemporaryFile(content(4, count: 3 << 20), name: "x.bin")
        let r = try curl(["-T", path, "-w", " %{http_code}", "http://127.0.0.1:\(server.port)/"])
        #expect(r.output.hasSuffix(" 507"))
        #expect(r.output.contains("disk full") || r.output.contains("available"))
        #expect(server.storedFiles().isEmpty)
    }

    @Test func aBodyCutShortIsNeverStoredAndTheServerGoesOn() throws {
        let events = EventLog()
        let server = try BackgroundServer(configure: { $0.udpEnabled = false }, prepare: { $0.onEvent = events.append })
        defer { server.stop() }
        let c = try BlockingClient(port: server.port)
        c.send(Array("PUT /cut.bin HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".utf8) + content(5, count: 40_000))
        #expect(waitUntil { server.hasRead(c) })
        c.shutdownWrite()
        _ = c.readUntilEOF()
        #expect(server.waitForStatistics { $0.uploadsFailed == 1 })
        #expect(server.storedFiles().isEmpty)
        #expect(server.partials().isEmpty)
        #expect(events.all.contains { if case .failed(let u, _, let code, false) = $0 { u.transport == .http && code == 13 } else { false } })
        #expect(statuses(try exchange(server.port, Array("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))) == [200])
    }

    @Test func malformedAndOversizedHeadsGet400And431() throws {
        let server = try BackgroundServer { $0.udpEnabled = false; $0.maxHTTPHeadBytes = 2048 }
        defer { server.stop() }
        #expect(statuses(try exchange(server.port, Array("BREW /pot HTTP/1.1\r\n\r\n".utf8))) == [400])
        #expect(statuses(try exchange(server.port, Array("PUT /x HTTP/1.1\r\nContent-Length: 12x\r\n\r\n".utf8))) == [400])
        #expect(statuses(try exchange(server.port, Array("GET / HTTP/1.1\r\nX-Big: \(String(repeating: "b", count: 4000))\r\n\r\n".utf8))) == [431])
        #expect(statuses(try exchange(server.port, Array("PUT /%zz HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".utf8))) == [400])
        #expect(statuses(try exchange(server.port, Array("PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".utf8))) == [400])
        #expect(server.storedFiles().isEmpty)
        #expect(server.partials().isEmpty)
        #expect(server.onLoop { $0.statistics.httpBadRequests } == 4)  // not the bad escape: that is the route's
    }

    @Test func aHeadThatTrickles408sAtTheHeaderTimeout() throws {
        let server = try BackgroundServer { $0.udpEnabled = false; $0.headerTimeout = 0.3 }
        defer { server.stop() }
        let c = try BlockingClient(port: server.port)
        c.send(Array("GET /healthz HTTP/1.1\r\nX-Slow: ".utf8))
        // The server answers by itself: nothing more is sent.
        let text = String(decoding: c.readUntilEOF() ?? [], as: UTF8.self)
        #expect(statuses(text) == [408])
        // It lingers, dropping input, until the client's end.
        c.send(Array("more".utf8))
        c.shutdownWrite()
        #expect(waitUntil { server.onLoop { $0.connectionCount } == 0 })
    }

    @Test func withHTTPOffARequestIsNotAnswered() throws {
        let server = try BackgroundServer { $0.udpEnabled = false; $0.httpEnabled = false }
        defer { server.stop() }
        let text = try exchange(server.port, Array("GET /healthz HTTP/1.1\r\n\r\n".utf8))
        #expect(!text.hasPrefix("HTTP/"))
        #expect(server.onLoop { $0.statistics.httpConnections } == 0)
    }

    @Test func aDrainingServerFinishesTheRequestInHandAndIsNotReady() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let c = try BlockingClient(port: server.port)
        c.send(Array("GET /readyz HTTP/1.1\r\n".utf8))
        #expect(waitUntil { server.hasRead(c) })
        server.onLoop { $0.drain(deadline: 10) { _ in } }
        c.send(Array("\r\n".utf8))
        let text = String(decoding: c.readUntilEOF() ?? [], as: UTF8.self)
        #expect(statuses(text) == [503])
        #expect(text.contains("Connection: close"))
        #expect(text.contains("draining"))
    }

    @Test func metricsCountUploadsByTransportAndReason() throws {
        let server = try BackgroundServer { $0.udpEnabled = false; $0.maxFileSize = 1 << 20 }
        defer { server.stop() }
        let path = writeTemporaryFile(content(6, count: 1000), name: "m.bin")
        _ = try curl(["-T", path, "http://127.0.0.1:\(server.port)/"])
        _ = try curl(["-T", path, "http://127.0.0.1:\(server.port)/"])
        _ = try sendFiles([path], port: server.port, seed: true)
        // A chunked body over the limit: failed, file_too_large.
        _ = try curl(["-H", "Transfer-Encoding: chunked", "-T", writeTemporaryFile(content(7, count: 2 << 20), name: "b.bin"), "http://127.0.0.1:\(server.port)/b"])
        let text = try curl(["http://127.0.0.1:\(server.port)/metrics"]).output
        #expect(text.contains("datastream_uploads_stored_total{transport=\"http\"} 2\n"))
        #expect(text.contains("datastream_uploads_stored_total{transport=\"seed-tcp\"} 1\n"))
        #expect(text.contains("datastream_uploads_started_total{transport=\"http\"} 3\n"))
        #expect(text.contains("datastream_uploads_failed_total{transport=\"http\",reason=\"file_too_large\"} 1\n") ||
                text.contains("datastream_uploads_failed_total{reason=\"file_too_large\",transport=\"http\"} 1\n"))
        #expect(text.contains("datastream_received_bytes_total{transport=\"seed-tcp\"} 1000\n"))
        #expect(text.contains("# TYPE datastream_connections_open gauge"))
        #expect(text.contains("datastream_connections_open 1"))
        // A second scrape shows the same totals (what changed is carried over once).
        let again = try curl(["http://127.0.0.1:\(server.port)/metrics"]).output
        #expect(again.contains("datastream_uploads_stored_total{transport=\"http\"} 2\n"))
    }

    @Test func aFormStoresEachFileAndSkipsPlainFields() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let big = content(14, count: 3 << 20), small = Array("x\r\n--not-the-boundary".utf8)
        let a = writeTemporaryFile(big, name: "big.bin"), b = writeTemporaryFile(small, name: "small.txt")
        let r = try curl(["-F", "note=hello", "-F", "f=@\(a)", "-F", "g=@\(b);filename=../evil name.txt", "-w", " %{http_code}", "http://127.0.0.1:\(server.port)/"])
        #expect(r.output == "{\"files\":[{\"name\":\"big.bin\",\"size\":\(big.count)},{\"name\":\"___evil name.txt\",\"size\":\(small.count)}]}\n 201")
        #expect(server.contents("big.bin") == big)
        #expect(server.contents("___evil name.txt") == small)
        #expect(server.storedFiles().count == 2)
        #expect(try curl(["-d", "x=1", "-w", " %{http_code}", "http://127.0.0.1:\(server.port)/"]).output.hasSuffix(" 415"))
    }

    @Test func aFormCutInItsSecondFileKeepsTheFirstOnly() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let first = content(15, count: 100_000)
        var body = Array("--XyZ\r\nContent-Disposition: form-data; name=\"a\"; filename=\"one.bin\"\r\n\r\n".utf8) + first
        body += Array("\r\n--XyZ\r\nContent-Disposition: form-data; name=\"b\"; filename=\"two.bin\"\r\n\r\n".utf8) + content(16, count: 50_000)
        let c = try BlockingClient(port: server.port)
        c.send(Array("POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 400000\r\n\r\n".utf8) + body)
        #expect(waitUntil { server.hasRead(c) })
        c.shutdownWrite()
        _ = c.readUntilEOF()
        #expect(server.waitForStatistics { $0.uploadsFailed == 1 && $0.uploadsStored == 1 })
        #expect(server.storedFiles() == ["one.bin"])
        #expect(server.contents("one.bin") == first)
        // A body that ends without the closing delimiter: 400, and its unfinished file is not stored.
        let text = try exchange(server.port, Array("POST / HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
        #expect(statuses(text) == [400])
        #expect(server.storedFiles() == ["one-1.bin", "one.bin"])
        #expect(server.partials().isEmpty)
    }

    @Test func storedEventsNameTheHTTPTransport() throws {
        let events = EventLog()
        let server = try BackgroundServer(configure: { $0.udpEnabled = false }, prepare: { $0.onEvent = events.append })
        defer { server.stop() }
        let path = writeTemporaryFile(content(8, count: 10), name: "ev.bin")
        _ = try curl(["-T", path, "http://127.0.0.1:\(server.port)/"])
        #expect(waitUntil { events.all.count == 2 })
        guard case .stored(let stored) = events.all.last else { Issue.record("no stored event"); return }
        #expect(stored.upload.transport == .http)
        #expect(stored.storedName == "ev.bin")
        #expect(stored.upload.size == 10)
    }
}

/// tus over raw sockets: what tuspy never sends (a PATCH cut in the middle of its body, a
/// wrong offset, two PATCHes at once).
struct TusTests {
    func request(_ port: Int, _ text: String, body: [UInt8] = []) throws -> String {
        let c = try BlockingClient(port: port)
        c.send(Array(text.utf8) + body)
        c.shutdownWrite()
        return String(decoding: c.readUntilEOF() ?? [], as: UTF8.self)
    }
    func header(_ response: String, _ name: String) -> String? {
        response.components(separatedBy: "\r\n").first { $0.lowercased().hasPrefix(name.lowercased() + ": ") }.map { String($0.dropFirst(name.count + 2)) }
    }

    @Test func aPatchCutMidBodyKeepsItsBytesAndTheUploadCompletesLater() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let data = content(9, count: 200_000)
        let created = try request(server.port, "POST /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: \(data.count)\r\nUpload-Metadata: filename Y3V0LmJpbg==\r\nConnection: close\r\n\r\n")
        #expect(created.hasPrefix("HTTP/1.1 201 "))
        let location = try #require(header(created, "Location"))
        let patchHead = { (offset: Int, length: Int) in
            "PATCH \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: \(offset)\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: \(length)\r\nConnection: close\r\n\r\n"
        }
        // Half the body, then the client is gone.
        let c = try BlockingClient(port: server.port)
        c.send(Array(patchHead(0, data.count).utf8) + data[0..<80_000])
        #expect(waitUntil { server.hasRead(c) })
        c.shutdownWrite()
        _ = c.readUntilEOF()
        #expect(server.waitForStatistics { $0.uploadsFailed == 1 })
        var offset = 0
        #expect(waitUntil {
            let status = (try? request(server.port, "HEAD \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n")) ?? ""
            offset = Int(header(status, "Upload-Offset") ?? "") ?? -1
            return offset == 80_000  // once the cut PATCH's file is closed and its id free
        })
        // The wrong offset is refused, the right one finishes it.
        #expect(try request(server.port, patchHead(0, 1), body: [0]).hasPrefix("HTTP/1.1 409 "))
        let done = try request(server.port, patchHead(offset, data.count - offset), body: Array(data[offset...]))
        #expect(done.hasPrefix("HTTP/1.1 204 "))
        #expect(header(done, "Upload-Offset") == "\(data.count)")
        #expect(header(done, "DataStream-Stored-Name") == "cut.bin")
        #expect(server.contents("cut.bin") == data)
        #expect(server.partials().isEmpty)
        #expect(try request(server.port, "HEAD \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 404 "))
    }

    @Test func aServerStoppedMidPatchKeepsTheUploadForAfterTheRestart() throws {
        let directory = BackgroundServer.temporaryDirectory()
        let server = try BackgroundServer(directory: directory) { $0.udpEnabled = false }
        let created = try request(server.port, "POST /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 100000\r\nConnection: close\r\n\r\n")
        let location = try #require(header(created, "Location"))
        let c = try BlockingClient(port: server.port)
        c.send(Array("PATCH \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 100000\r\n\r\n".utf8) + content(13, count: 30_000))
        #expect(waitUntil { server.hasRead(c) })
        server.stop()
        let restarted = try BackgroundServer(directory: directory) { $0.udpEnabled = false }
        defer { restarted.stop() }
        let status = try request(restarted.port, "HEAD \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n")
        #expect(status.hasPrefix("HTTP/1.1 200 "))
        #expect(header(status, "Upload-Offset") == "30000")
    }

    @Test func aSecondPatchWhileOneRunsIsLockedAndDeleteRemovesTheUpload() throws {
        let server = try BackgroundServer { $0.udpEnabled = false }
        defer { server.stop() }
        let created = try request(server.port, "POST /files HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1000\r\nConnection: close\r\n\r\n")
        let location = try #require(header(created, "Location"))
        let first = try BlockingClient(port: server.port)
        first.send(Array("PATCH \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n".utf8) + [1, 2, 3])
        #expect(waitUntil { server.hasRead(first) && server.onLoop { $0.statistics.httpRequests } == 2 })
        let second = try request(server.port, "PATCH \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 1\r\nConnection: close\r\n\r\n", body: [9])
        #expect(second.hasPrefix("HTTP/1.1 423 "))
        #expect(try request(server.port, "DELETE \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 423 "))
        first.shutdownWrite()
        _ = first.readUntilEOF()
        #expect(waitUntil { (try? request(server.port, "DELETE \(location) HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n"))?.hasPrefix("HTTP/1.1 204 ") == true })
        #expect(server.partials().isEmpty)
        #expect(server.storedFiles().isEmpty)
    }
}

/// Events a server reported, collected from its loop thread.
final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [UploadEvent] = []
    func append(_ event: UploadEvent) { lock.withLock { events.append(event) } }
    var all: [UploadEvent] { lock.withLock { events } }
}
