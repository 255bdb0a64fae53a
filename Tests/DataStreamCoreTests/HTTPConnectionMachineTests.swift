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
        case .abortUpload(let r, _, _): r?.status
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
        #expect(m.dropsInput)
        #expect(m.endOfStream() == .close)
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
        #expect(m.dropsInput)  // the rest of the body is read and dropped
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
        #expect(o.dropsInput)
    }

    @Test func theClientLeavingMidBodyAbandonsTheUpload() {
        var m = machine()
        _ = m.headReceived(put("/a", length: 10))
        _ = m.uploadOpened()
        _ = m.bodyReceived(3)
        #expect(m.endOfStream() == .abortUpload(nil, reason: .unexpectedEndOfStream(received: 3, expected: 10), keepPartial: false))
        #expect(m.messageComplete() == .none)
    }

    @Test func theClientLeavingWhileTheFileOpensDiscardsItWhenOpen() {
        var m = machine()
        _ = m.headReceived(put("/a", length: 10))
        #expect(m.endOfStream() == .close)
        #expect(m.uploadOpened() == .abortUpload(nil, reason: .unexpectedEndOfStream(received: 0, expected: 0), keepPartial: false))
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

    // MARK: - forms

    func form(expect: Bool = false) -> HTTPRequestHead {
        HTTPRequestHead(method: .post, target: "/", headers: [HTTPHeader("Content-Type", "multipart/form-data; boundary=B")] + (expect ? [HTTPHeader("Expect", "100-continue")] : []),
                        contentLength: 1000)
    }

    @Test func aFormStoresEachFilePartInTurnAndAnswersTheList() {
        var m = machine()
        #expect(m.headReceived(form(expect: true)) == .readForm(boundary: "B", continueFirst: true))
        #expect(m.takesInput && m.readsForm)
        #expect(m.partBegan(filename: nil) == .none)  // a plain field
        #expect(!m.isReceivingBody)
        #expect(m.partEnded() == .none)
        #expect(m.partBegan(filename: Array("a.txt".utf8)) == .openUpload(name: "a.txt", declaredSize: nil))
        #expect(m.uploadOpened() == .none)  // Continue went with the head
        #expect(m.bodyReceived(4) == .none)
        #expect(m.partEnded() == .commitUpload(size: 4))
        #expect(m.uploadStored(name: "a.txt") == .none)
        #expect(m.takesInput)
        #expect(m.partBegan(filename: []) == .none)  // a file input left empty
        #expect(m.partBegan(filename: Array("b".utf8)) == .openUpload(name: "b", declaredSize: nil))
        _ = m.uploadOpened()
        _ = m.bodyReceived(2)
        _ = m.partEnded()
        #expect(m.uploadStored(name: "b-1") == .none)
        guard case .respond(let r, false) = m.messageComplete() else { Issue.record("no answer"); return }
        #expect(r.status == 201)
        #expect(String(decoding: r.body, as: UTF8.self) == "{\"files\":[{\"name\":\"a.txt\",\"size\":4},{\"name\":\"b-1\",\"size\":2}]}\n")
    }

    @Test func formsWithoutFilesBadNamesOrCutPartsAreRefused() {
        var none = machine()
        _ = none.headReceived(form())
        #expect(status(none.messageComplete()) == 400)
        var bad = machine()
        _ = bad.headReceived(form())
        #expect(status(bad.partBegan(filename: [0xFF])) == 400)
        #expect(bad.dropsInput)
        var cut = machine()
        _ = cut.headReceived(form())
        _ = cut.partBegan(filename: Array("a".utf8))
        _ = cut.uploadOpened()
        #expect(status(cut.messageComplete()) == 400)  // the body ended inside the part
        var plain = machine()
        #expect(status(plain.headReceived(HTTPRequestHead(method: .post, target: "/", headers: [HTTPHeader("Content-Type", "text/plain")], contentLength: 3))) == 415)
    }

    // MARK: - tus

    let id = UploadID(bytes: Array(0..<16))
    func tus(_ method: HTTPMethod, _ target: String, _ headers: [(String, String)] = [], length: UInt64? = nil) -> HTTPRequestHead {
        HTTPRequestHead(method: method, target: target, headers: [HTTPHeader("Tus-Resumable", "1.0.0")] + headers.map { HTTPHeader($0.0, $0.1) }, contentLength: length)
    }
    func header(_ a: HTTPConnectionMachine.Action, _ name: String) -> String? {
        if case .respond(let r, _) = a { return r.headers.first { $0.name == name }?.value }
        return nil
    }

    @Test func tusCreationAnswers201WithTheUploadsLocation() {
        var m = machine()
        let head = tus(.post, "/files/", [("Upload-Length", "10"), ("Upload-Metadata", "filename cmVwb3J0LnBkZg==,private")])
        #expect(m.headReceived(head) == .createTusUpload(name: "report.pdf", length: 10))
        #expect(!m.takesInput)
        let created = m.tusCreated(id, now: 0)
        #expect(status(created) == 201)
        #expect(header(created, "Location") == "/files/000102030405060708090a0b0c0d0e0f")
        #expect(header(created, "Tus-Resumable") == "1.0.0")
        #expect(header(created, "Upload-Expires") == "Thu, 08 Jan 1970 00:00:00 GMT")
        #expect(m.responseSent(now: 0) == .none)
    }

    @Test func tusRequestsWithoutTheVersionAre412AndOptionsAnswers() {
        var m = machine(maxFileSize: 5000)
        let refused = m.headReceived(HTTPRequestHead(method: .post, target: "/files/", headers: [HTTPHeader("Upload-Length", "1")]))
        #expect(status(refused) == 412)
        #expect(header(refused, "Tus-Version") == "1.0.0")
        _ = m.responseSent(now: 0)
        let options = m.headReceived(HTTPRequestHead(method: .options, target: "/files/"))
        #expect(status(options) == 204)
        #expect(header(options, "Tus-Extension") == "creation,termination,expiration")
        #expect(header(options, "Tus-Max-Size") == "5000")
    }

    @Test func tusCreationPastTheLimitOrWithoutALengthIsRefused() {
        var m = machine(maxFileSize: 100)
        #expect(status(m.headReceived(tus(.post, "/files/", [("Upload-Length", "101")]))) == 413)
        var n = machine()
        #expect(status(n.headReceived(tus(.post, "/files/"))) == 400)
        var o = machine()
        #expect(status(o.headReceived(tus(.post, "/files/", [("Upload-Length", "5"), ("Upload-Metadata", "filename !!!")]))) == 400)
    }

    @Test func tusHeadTellsTheOffsetAndAMissingUploadIs404() {
        var m = machine()
        #expect(m.headReceived(tus(.head, "/files/" + id.hex)) == .lookUpTusUpload(id))
        let found = m.tusFound(offset: 4, length: 10)
        #expect(status(found) == 200)
        #expect(header(found, "Upload-Offset") == "4")
        #expect(header(found, "Upload-Length") == "10")
        #expect(header(found, "Cache-Control") == "no-store")
        guard case .respond(_, true) = found else { Issue.record("HEAD answers with a head only"); return }
        _ = m.responseSent(now: 0)
        _ = m.headReceived(tus(.head, "/files/" + id.hex))
        #expect(status(m.tusMissing()) == 404)
        var n = machine()
        #expect(status(n.headReceived(tus(.head, "/files/not-an-id"))) == 404)
    }

    func patch(_ offset: UInt64, _ length: UInt64) -> HTTPRequestHead {
        tus(.patch, "/files/" + id.hex, [("Upload-Offset", "\(offset)"), ("Content-Type", "application/offset+octet-stream")], length: length)
    }

    @Test func aPatchThatEndsShortKeepsThePartialAndAnswersTheNewOffset() {
        var m = machine()
        #expect(m.headReceived(patch(4, 3)) == .resumeTusUpload(id, offset: 4))
        #expect(m.uploadOpened(tusLength: 10) == .none)
        #expect(m.bodyReceived(3) == .none)
        #expect(m.messageComplete() == .keepUpload)
        let kept = m.uploadKept(now: 0)
        #expect(status(kept) == 204)
        #expect(header(kept, "Upload-Offset") == "7")
    }

    @Test func theLastPatchStoresTheUpload() {
        var m = machine()
        _ = m.headReceived(patch(7, 3))
        _ = m.uploadOpened(tusLength: 10)
        _ = m.bodyReceived(3)
        #expect(m.messageComplete() == .commitUpload(size: 10))
        let stored = m.uploadStored(name: "report.pdf")
        #expect(status(stored) == 204)
        #expect(header(stored, "Upload-Offset") == "10")
        #expect(header(stored, "DataStream-Stored-Name") == "report.pdf")
    }

    @Test func aPatchAtTheWrongOffsetIs409AndABusyUploadIs423() {
        var m = machine()
        _ = m.headReceived(patch(3, 1))
        #expect(status(m.uploadRefused(.resumeMismatch(detail: "holds 4"))) == 409)
        var n = machine()
        _ = n.headReceived(patch(4, 1))
        #expect(status(n.uploadRefused(.uploadBusy)) == 423)
        var o = machine()
        #expect(status(o.headReceived(tus(.patch, "/files/" + id.hex, [("Upload-Offset", "0"), ("Content-Type", "text/plain")], length: 1))) == 415)
    }

    @Test func aPatchPastTheLengthIs413AndKeepsWhatCameBefore() {
        var m = machine()
        _ = m.headReceived(patch(8, 5))
        guard case .abortUpload(let r, _, true) = m.uploadOpened(tusLength: 10) else { Issue.record("no abort keeping the partial"); return }
        #expect(r?.status == 413)
        var chunked = machine()
        _ = chunked.headReceived(HTTPRequestHead(method: .patch, target: "/files/" + id.hex, headers: [HTTPHeader("Tus-Resumable", "1.0.0"), HTTPHeader("Upload-Offset", "8"), HTTPHeader("Content-Type", "application/offset+octet-stream")], chunked: true))
        _ = chunked.uploadOpened(tusLength: 10)
        #expect(chunked.bodyReceived(2) == .none)
        guard case .abortUpload(let r2, _, true) = chunked.bodyReceived(1) else { Issue.record("no abort keeping the partial"); return }
        #expect(r2?.status == 413)
    }

    @Test func aClientKilledMidPatchLeavesItsPartialForTheNextPatch() {
        var m = machine()
        _ = m.headReceived(patch(0, 10))
        _ = m.uploadOpened(tusLength: 10)
        _ = m.bodyReceived(6)
        #expect(m.endOfStream() == .abortUpload(nil, reason: .unexpectedEndOfStream(received: 6, expected: 10), keepPartial: true))
        var opening = machine()
        _ = opening.headReceived(patch(0, 10))
        #expect(opening.endOfStream() == .close)
        guard case .abortUpload(nil, _, true) = opening.uploadOpened(tusLength: 10) else { Issue.record("the partial must stay"); return }
    }

    @Test func terminationAnswers204() {
        var m = machine()
        #expect(m.headReceived(tus(.delete, "/files/" + id.hex)) == .terminateTusUpload(id))
        #expect(status(m.tusTerminated()) == 204)
        var busy = machine()
        _ = busy.headReceived(tus(.delete, "/files/" + id.hex))
        #expect(status(busy.uploadRefused(.uploadBusy)) == 423)
    }

    @Test func tusMetadataAndDatesDecode() {
        #expect(Tus.metadata("filename d29ybGQ=, is_confidential") == ["filename": Array("world".utf8), "is_confidential": []])
        #expect(Tus.metadata("filename not*base64") == nil)
        #expect(Tus.httpDate(1_764_633_600) == "Tue, 02 Dec 2025 00:00:00 GMT")
    }

    @Test func metricReasonsAreTheErrorNamesInSnakeCase() {
        let errors: [ProtocolError] = [.malformedFrame(type: 0, detail: ""), .badMagic, .unsupportedVersion(0), .unexpectedFrame(type: 0, state: ""),
            .frameTooLarge(length: 0, limit: 0), .authenticationRequired, .authenticationFailed, .invalidName(reason: ""), .fileTooLarge(size: 0, limit: 0),
            .unsupportedDigest(0), .uploadBusy, .resumeMismatch(detail: ""), .unexpectedEndOfStream(received: 0, expected: 0), .invalidSeedSize(digits: ""),
            .trailingBytes(declared: 0, received: 0), .storageFailed(reason: ""), .connectionFailed(reason: ""), .headerTimeout(seconds: 0),
            .idleTimeout(seconds: 0), .tooManyConnections(limit: 0), .seedProtocolDisabled, .shuttingDown, .diskFull(reason: ""), .serverBusy(reason: "")]
        let names = ["malformedFrame", "badMagic", "unsupportedVersion", "unexpectedFrame", "frameTooLarge", "authenticationRequired",
                     "authenticationFailed", "invalidName", "fileTooLarge", "unsupportedDigest", "uploadBusy", "resumeMismatch",
                     "unexpectedEndOfStream", "invalidSeedSize", "trailingBytes", "storageFailed", "connectionFailed", "headerTimeout",
                     "idleTimeout", "tooManyConnections", "seedProtocolDisabled", "shuttingDown", "diskFull", "serverBusy"]
        for (e, name) in zip(errors, names) {
            if let label = Mirror(reflecting: e).children.first?.label { #expect(label == name) }  // a case with a payload names itself
            let snake = name.reduce(into: "") { out, c in out += c.isUppercase ? "_" + c.lowercased() : String(c) }
            #expect(ProtocolError.label(code: e.code) == snake, "\(e.code)")
        }
        #expect(ProtocolError.label(code: 999) == "other")
    }
}

/// The completion hooks' queue, decision by decision.
struct HookQueueTests {
    @Test func atMostNRunAndTheRestWaitInOrder() {
        var q = HookQueue<Int>(maxRunning: 2, maxWaiting: 2, timeout: 10)
        guard case .start(1) = q.submit(1), case .start(2) = q.submit(2) else { Issue.record("the first two start"); return }
        guard case .queued = q.submit(3), case .queued = q.submit(4) else { Issue.record("the next two wait"); return }
        guard case .dropped = q.submit(5) else { Issue.record("past the line: dropped"); return }
        #expect(q.running == 2 && q.waitingCount == 2)
        #expect(q.finished() == 3)
        #expect(q.running == 2)
        #expect(q.finished() == 4)
        #expect(q.finished() == nil)
        #expect(q.running == 1)
        #expect(q.finished() == nil)
        #expect(q.running == 0)
        guard case .start(6) = q.submit(6) else { Issue.record("room again"); return }
    }

    @Test func aHookRunsUntilItsTimeout() {
        let q = HookQueue<Int>(maxRunning: 1, timeout: 5)
        #expect(!q.hasTimedOut(startedAt: 100, now: 104))
        #expect(q.hasTimedOut(startedAt: 100, now: 105))
        #expect(!q.hasTimedOut(startedAt: 100, now: 50))  // a clock that went back is not a timeout
    }

    @Test func stoppingDropsWhatWaits() {
        var q = HookQueue<Int>(maxRunning: 1, timeout: 5)
        _ = q.submit(1); _ = q.submit(2); _ = q.submit(3)
        #expect(q.discardWaiting() == 2)
        #expect(q.finished() == nil)
    }
}
