import DataStreamCore
import HTTPParsing
import Testing

/// The parser over real request bytes: heads, bodies (plain and chunked), pipelining, limits.
struct HTTPRequestParserTests {
    /// Feeds `text` the way a driver does (again after each stop) and records what came out.
    func run(_ parser: HTTPRequestParser, _ text: String) throws -> (heads: [HTTPRequestHead], body: [UInt8], ends: Int, consumed: Int) {
        var heads: [HTTPRequestHead] = []
        var body: [UInt8] = []
        var ends = 0
        let bytes = Array(text.utf8)
        var offset = 0
        try bytes.withUnsafeBytes { all in
            while offset < all.count {
                let n = try parser.parse(UnsafeRawBufferPointer(rebasing: all[offset...])) { event in
                    switch event {
                    case .head(let h): heads.append(h)
                    case .body(let b): body += b
                    case .end: ends += 1
                    }
                }
                if n == 0 { break }
                offset += n
            }
        }
        return (heads, body, ends, offset)
    }

    @Test func aPutWithALengthGivesItsHeadThenItsBody() throws {
        let p = HTTPRequestParser()
        let r = try run(p, "PUT /a%20b.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
        #expect(r.heads.count == 1)
        let h = try #require(r.heads.first)
        #expect(h.method == .put)
        #expect(h.target == "/a%20b.txt")
        #expect(h.contentLength == 5)
        #expect(!h.chunked)
        #expect(h.keepAlive)
        #expect(h.expectsContinue)
        #expect(h.header("host") == "x")
        #expect(r.body == Array("hello".utf8))
        #expect(r.ends == 1)
        #expect(p.isBetweenMessages)
    }

    @Test func aChunkedBodyArrivesDecoded() throws {
        let r = try run(HTTPRequestParser(), "PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        #expect(r.heads.first?.chunked == true)
        #expect(r.heads.first?.contentLength == nil)
        #expect(r.body == Array("abcdefg".utf8))
        #expect(r.ends == 1)
    }

    @Test func pipelinedRequestsStopAfterEachHeadAndEnd() throws {
        let p = HTTPRequestParser()
        let text = "GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n"
        var stops = 0
        let bytes = Array(text.utf8)
        var offset = 0
        var targets: [String] = []
        try bytes.withUnsafeBytes { all in
            while offset < all.count {
                offset += try p.parse(UnsafeRawBufferPointer(rebasing: all[offset...])) { if case .head(let h) = $0 { targets.append(h.target) } }
                stops += 1
            }
        }
        #expect(targets == ["/healthz", "/readyz"])
        #expect(stops == 4)  // head, end, head, end
    }

    @Test func http10ClosesUnlessAskedToKeepAlive() throws {
        #expect(try run(HTTPRequestParser(), "GET / HTTP/1.0\r\n\r\n").heads.first?.keepAlive == false)
        #expect(try run(HTTPRequestParser(), "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").heads.first?.keepAlive == false)
    }

    @Test func garbageIsAFailureWithTheParsersName() throws {
        #expect(throws: HTTPRequestParser.Failure.self) { try run(HTTPRequestParser(), "PUT /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n") }
        do {
            _ = try run(HTTPRequestParser(), "GE\0T / HTTP/1.1\r\n\r\n")
            Issue.record("no failure")
        } catch let f as HTTPRequestParser.Failure {
            #expect(f.name.hasPrefix("HPE_"))
            #expect(!f.isHeadTooLarge)
        }
    }

    @Test func aHeadPastTheLimitIsTooLarge() throws {
        let p = HTTPRequestParser(maxHeadBytes: 1024)
        do {
            _ = try run(p, "GET / HTTP/1.1\r\nX-Long: \(String(repeating: "a", count: 2000))\r\n\r\n")
            Issue.record("no failure")
        } catch let f as HTTPRequestParser.Failure {
            #expect(f.isHeadTooLarge)
        }
        // Just under it passes.
        #expect(try run(HTTPRequestParser(maxHeadBytes: 1024), "GET / HTTP/1.1\r\nX-Long: \(String(repeating: "a", count: 900))\r\n\r\n").heads.count == 1)
    }

    @Test func theEndOfStreamInsideABodyIsAFailure() throws {
        let p = HTTPRequestParser()
        _ = try run(p, "PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        #expect(throws: HTTPRequestParser.Failure.self) { try p.finish() }
        let q = HTTPRequestParser()
        _ = try run(q, "GET / HTTP/1.1\r\n\r\n")
        try q.finish()
    }

    @Test func anUpgradeStopsParsing() throws {
        let p = HTTPRequestParser()
        let head = "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        let r = try run(p, head + "\u{01}\u{02}")
        #expect(r.heads.first?.upgrade == true)
        #expect(p.upgraded)
        // It takes the head and nothing of the new protocol's bytes.
        #expect(r.consumed == head.utf8.count)
    }
}
