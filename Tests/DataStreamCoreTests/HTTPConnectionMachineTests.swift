import DataStreamCore
import Testing

/// The HTTP connection machine, transition by transition, with time passed in.
struct HTTPConnectionMachineTests {
    let s: UInt64 = 1_000_000_000
    func machine(maxFileSize: UInt64 = 1 << 30) -> HTTPConnectionMachine {
        HTTPConnectionMachine(configuration: .init(maxFileSize: maxFileSize, headTimeout: 30 * s, idleTimeout: 60 * s), now: 0)
    }
    func put(_ target: String, length: UInt64? = nil, chunked: Bool = false, keepAlive: Bool = true, expect: Bool = false) -> HTTPRequestHead {
        var headers: [HTTPHeader] = []
        if expect { headers.append(HTTPHeader("Expect", "100-continue")) }
        return HTTPRequestHead(method: .put, target: target, headers: headers, contentLength: length, chunked: chunked, keepAlive: keepAlive)
    }
    func status(_ a: HTTPConnectionMachine.Action) -> Int? {
        switch a {
        case .respond(let r, _): r.status
        case .abortUpload(let r, _): r?.status
        default: nil
        }
    }

    @Test func aPutOpensReceivesStoresAndAnswers201ThenWaitsForTheNext() {
        var m = machine()
        #expect(m.headReceived(put("/report%20v2.pdf", length: 5)) == .openUpload(name: "report v2.pdf", declaredSize: 5))
        #expect(m.stateName == "opening")
        #expect(!m.takesInput)
        #expect(m.uploadOpened() == .none)
        #expect(m.bodyReceived(3) == .none)
        #expect(m.bodyReceived(2) == .none)
        #expect(m.messageComplete() == .commitUpload(size: 5))
        guard case .respond(let r, false) = m.uploadStored(name: "report v2-1.pdf") else { Issue.record("no response"); return }
        #expect(r.status == 201)
        #expect(r.headers.contains(HTTPHeader("Location", "/report%20v2-1.pdf")))
        #expect(String(decoding: r.body, as: UTF8.self) == "{\"name\":\"report v2-1.pdf\",\"size\":5}\n")
        #expect(m.responseSent(now: 7 * s) == .none)
        #expect(m.stateName == "awaitingHead")
        #expect(m.takesInput)
    }

    @Test func aBodyWithNoRoomLeftIs507AndCloses() {
        var m = machine()
        _ = m.headReceived(put("/c", chunked: true))
        _ = m.uploadOpened()
        #expect(status(m.uploadBroken(.diskFull(reason: "none"))) == 507)
        #expect(m.isClosed)
    }

    @Test func expectContinueIsAnsweredOnceTheFileIsOpen() {
        var m = machine()
        _ = m.headReceived(put("/a", length: 10, expect: true))
        #expect(m.uploadOpened() == .send(HTTPResponse.continueBytes))
    }

    @Test func aKnownLengthOverTheLimitIs413BeforeAnyFile() {
        var m = machine(maxFileSize: 100)
        #expect(status(m.headReceived(put("/big", length: 101))) == 413)
        #expect(m.responseSent(now: 0) == .linger)  // its body was not read
    }

    @Test func aChunkedBodyPastTheLimitIsAbandonedWith413() {
        var m = machine(maxFileSize: 100)
        #expect(m.headReceived(put("/c", chunked: true)) == .openUpload(name: "c", declaredSize: nil))
        _ = m.uploadOpened()
        #expect(m.bodyReceived(100) == .none)
        #expect(status(m.bodyReceived(1)) == 413)
        #expect(m.isClosed)
    }

    @Test func aPutWithoutANameGetsAGeneratedOne() {
        var m = machine()
        #expect(m.headReceived(put("/", length: 0)) == .openUpload(name: nil, declaredSize: 0))
    }

    @Test func badNamesAndTargetsAre400() {
        var m = machine()
        #expect(status(m.headReceived(put("/a%ZZ", length: 1))) == 400)
        var n = machine()
        #expect(status(n.headReceived(put("/%FF%FE", length: 1))) == 400)  // not UTF-8
    }

    @Test func aNameWithSlashesStaysOneComponent() {
        var m = machine()
        #expect(m.headReceived(put("/../etc/passwd", length: 1)) == .openUpload(name: "___etc_passwd", declaredSize: 1))
    }

    @Test func noRoomIs507AndCloses() {
        var m = machine()
        _ = m.headReceived(put("/x", length: 1 << 20))
        #expect(status(m.uploadRefused(.diskFull(reason: "none left"))) == 507)
        #expect(m.responseSent(now: 0) == .linger)
    }

    @Test func resourcesAreServedAndKeepTheConnection() {
        var m = machine()
        #expect(m.headReceived(HTTPRequestHead(method: .get, target: "/metrics")) == .serve(.metrics, headOnly: false))
        #expect(m.responseSent(now: 1) == .none)
        #expect(m.headReceived(HTTPRequestHead(method: .head, target: "/healthz")) == .serve(.health, headOnly: true))
        #expect(m.responseSent(now: 2) == .none)
        #expect(m.headReceived(HTTPRequestHead(method: .get, target: "/readyz?x=1", keepAlive: false)) == .serve(.ready, headOnly: false))
        #expect(m.responseSent(now: 3) == .linger)
    }

    @Test func unknownRoutesAndMethods() {
        var m = machine()
        #expect(status(m.headReceived(HTTPRequestHead(method: .get, target: "/nope"))) == 404)
        #expect(m.responseSent(now: 0) == .none)
        guard case .respond(let r, _) = m.headReceived(HTTPRequestHead(method: .post, target: "/metrics")) else { Issue.record("no response"); return }
        #expect(r.status == 405)
        #expect(r.headers.contains(HTTPHeader("Allow", "GET, HEAD")))
        var v = machine()
        #expect(status(v.headReceived(HTTPRequestHead(method: .get, target: "/", versionMajor: 2))) == 505)
    }

    @Test func anErrorWithAnUnreadBodyCloses() {
        var m = machine()
        #expect(status(m.headReceived(HTTPRequestHead(method: .post, target: "/nope", contentLength: 10))) == 404)
        #expect(m.responseSent(now: 0) == .linger)
    }

    @Test func malformedInputIs400OrTooLargeHeadsAre431() {
        var m = machine()
        #expect(status(m.parseFailed(headTooLarge: false, detail: "x")) == 400)
        #expect(m.responseSent(now: 0) == .linger)
        var n = machine()
        #expect(status(n.parseFailed(headTooLarge: true, detail: "x")) == 431)
        var o = machine()
        _ = o.headReceived(put("/a", chunked: true))
        _ = o.uploadOpened()
        #expect(status(o.parseFailed(headTooLarge: false, detail: "bad chunk")) == 400)
        #expect(o.isClosed)
    }

    @Test func theClientLeavingMidBodyAbandonsTheUpload() {
        var m = machine()
        _ = m.headReceived(put("/a", length: 10))
        _ = m.uploadOpened()
        _ = m.bodyReceived(3)
        #expect(m.endOfStream() == .abortUpload(nil, reason: .unexpectedEndOfStream(received: 3, expected: 10)))
        #expect(m.messageComplete() == .none)
    }

    @Test func theClientLeavingWhileTheFileOpensDiscardsItWhenOpen() {
        var m = machine()
        _ = m.headReceived(put("/a", length: 10))
        #expect(m.endOfStream() == .close)
        #expect(m.uploadOpened() == .abortUpload(nil, reason: .unexpectedEndOfStream(received: 0, expected: 0)))
    }

    @Test func aHalfCloseAfterTheBodyStillStoresAndAnswersThenCloses() {
        var m = machine()
        _ = m.headReceived(put("/a", length: 1))
        _ = m.uploadOpened()
        _ = m.bodyReceived(1)
        _ = m.messageComplete()
        #expect(m.endOfStream() == .none)
        #expect(status(m.uploadStored(name: "a")) == 201)
        #expect(m.responseSent(now: 0) == .close)
    }

    @Test func aSlowHeadGets408AndAnIdleKeptConnectionCloses() {
        var m = machine()
        m.inputArrived(now: 10 * s)
        #expect(m.tick(now: 39 * s) == .none)
        #expect(status(m.tick(now: 40 * s)) == 408)
        var n = machine()
        #expect(n.tick(now: 59 * s) == .none)
        #expect(n.tick(now: 60 * s) == .close)
    }

    @Test func aSilentBodyIsAbandonedAfterTheIdleTimeout() {
        var m = machine()
        m.inputArrived(now: 0)
        _ = m.headReceived(put("/a", length: 10))
        _ = m.uploadOpened()
        m.inputArrived(now: 5 * s)
        _ = m.bodyReceived(1)
        #expect(m.tick(now: 64 * s) == .none)
        #expect(status(m.tick(now: 65 * s)) == 408)
        #expect(m.isClosed)
    }

    @Test func drainingClosesIdleConnectionsAndLetsUploadsFinish() {
        var idle = machine()
        #expect(idle.drain() == .close)
        var busy = machine()
        _ = busy.headReceived(put("/a", length: 1))
        #expect(busy.drain() == .none)
        #expect(busy.hasUploadInProgress)
        _ = busy.uploadOpened()
        _ = busy.bodyReceived(1)
        _ = busy.messageComplete()
        #expect(status(busy.uploadStored(name: "a")) == 201)
        #expect(busy.responseSent(now: 0) == .linger)
    }

    @Test func aStoreFailureIsAnsweredAndCloses() {
        var m = machine()
        _ = m.headReceived(put("/a", length: 0))
        _ = m.uploadOpened()
        _ = m.messageComplete()
        #expect(status(m.uploadFailed(.storageFailed(reason: "EIO"))) == 500)
        #expect(m.responseSent(now: 0) == .linger)
    }

    @Test func aClosingResponseLingersUntilTheClientsEndOrTheLimit() {
        var m = machine()
        #expect(status(m.headReceived(HTTPRequestHead(method: .post, target: "/nope", contentLength: 1 << 20))) == 404)
        #expect(m.closesAfterResponse)
        #expect(m.responseSent(now: 10 * s) == .linger)
        #expect(m.dropsInput)
        #expect(!m.takesInput)
        #expect(m.tick(now: 14 * s) == .none)
        #expect(m.tick(now: 15 * s) == .close)
        var n = machine()
        _ = n.headReceived(HTTPRequestHead(method: .get, target: "/healthz", keepAlive: false))
        #expect(n.responseSent(now: 0) == .linger)
        #expect(n.endOfStream() == .close)
    }

    @Test func aKeptConnectionsResponseDoesNotSayClose() {
        var m = machine()
        _ = m.headReceived(HTTPRequestHead(method: .get, target: "/healthz"))
        #expect(!m.closesAfterResponse)
    }

    @Test func percentCodingRoundTrips() {
        #expect(HTTPRoute.percentDecoded("/a%2Fb%20c+d") == Array("/a/b c+d".utf8))
        #expect(HTTPRoute.percentDecoded("/a%2") == nil)
        #expect(HTTPRoute.percentEncoded("café v1.txt") == "caf%C3%A9%20v1.txt")
    }
}
