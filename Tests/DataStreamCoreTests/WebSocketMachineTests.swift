import DataStreamCore
import Testing

/// The handshake at `/ws`, the routes it adds, the token on HTTP upload routes, and the
/// WebSocket upload machine transition by transition, with time passed in.
struct WebSocketHandshakeTests {
    func handshake(_ headers: [HTTPHeader], method: HTTPMethod = .get) -> HTTPRequestHead {
        HTTPRequestHead(method: method, target: "/ws", headers: headers, upgrade: true)
    }
    let good = [HTTPHeader("Upgrade", "websocket"), HTTPHeader("Connection", "keep-alive, Upgrade"),
                HTTPHeader("Sec-WebSocket-Version", "13"), HTTPHeader("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]

    @Test func theAcceptKeyIsRFC6455s() {
        #expect(WebSocketHandshake.accept(key: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func aGoodHandshakeSwitchesWithoutABody() {
        guard case .switching(let bytes) = WebSocketHandshake.answer(handshake(good)) else { Issue.record("refused"); return }
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
        #expect(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))
        #expect(!text.contains("Content-Length"))
        #expect(text.hasSuffix("\r\n\r\n"))
        var m = HTTPConnectionMachine(configuration: .init(), now: 0)
        #expect(m.headReceived(handshake(good)) == .upgradeToWebSocket(bytes))
    }

    @Test func badHandshakesAreRefusedWithTheirStatus() {
        func status(_ head: HTTPRequestHead) -> Int? {
            if case .refused(let r) = WebSocketHandshake.answer(head) { return r.status }
            return nil
        }
        #expect(status(handshake(good, method: .post)) == 405)
        #expect(status(handshake(good.filter { $0.name != "Sec-WebSocket-Version" })) == 426)
        #expect(status(handshake(good.filter { $0.name != "Sec-WebSocket-Version" } + [HTTPHeader("Sec-WebSocket-Version", "8")])) == 426)
        #expect(status(handshake(good.filter { $0.name != "Upgrade" })) == 426)
        #expect(status(handshake(good.filter { $0.name != "Sec-WebSocket-Key" } + [HTTPHeader("Sec-WebSocket-Key", "c2hvcnQ=")])) == 400)
        #expect(status(HTTPRequestHead(method: .get, target: "/ws", versionMinor: 0, headers: good)) == 400)
    }

    @Test func getSlashIsThePage() {
        var m = HTTPConnectionMachine(configuration: .init(), now: 0)
        #expect(m.headReceived(HTTPRequestHead(method: .get, target: "/")) == .serve(.page, headOnly: false))
        #expect(m.responseSent(now: 0) == .none)
        #expect(m.headReceived(HTTPRequestHead(method: .head, target: "/?x")) == .serve(.page, headOnly: true))
    }

    @Test func withATokenUploadRoutesNeedIt() {
        let config = HTTPConnectionMachine.Configuration(token: "t0ken")
        func answer(_ head: HTTPRequestHead) -> HTTPConnectionMachine.Action {
            var m = HTTPConnectionMachine(configuration: config, now: 0)
            return m.headReceived(head)
        }
        func status(_ a: HTTPConnectionMachine.Action) -> Int? { if case .respond(let r, _) = a { r.status } else { nil } }
        let put = HTTPRequestHead(method: .put, target: "/a.txt", contentLength: 3)
        let refused = answer(put)
        #expect(status(refused) == 401)
        if case .respond(let r, _) = refused { #expect(r.headers.contains(HTTPHeader("WWW-Authenticate", #"Bearer realm="datastream""#))) }
        var wrong = put
        wrong.headers = [HTTPHeader("Authorization", "Bearer t0kem")]
        #expect(status(answer(wrong)) == 401)
        var right = put
        right.headers = [HTTPHeader("authorization", "bearer t0ken")]
        #expect(answer(right) == .openUpload(name: "a.txt", declaredSize: 3))
        #expect(status(answer(HTTPRequestHead(method: .post, target: "/", headers: [HTTPHeader("Content-Type", "multipart/form-data; boundary=x")], chunked: true))) == 401)
        #expect(status(answer(HTTPRequestHead(method: .post, target: "/files/", headers: [HTTPHeader("Tus-Resumable", "1.0.0"), HTTPHeader("Upload-Length", "5")]))) == 401)
        #expect(status(answer(HTTPRequestHead(method: .options, target: "/files/"))) != 401)
        #expect(answer(HTTPRequestHead(method: .get, target: "/")) == .serve(.page, headOnly: false))
        #expect(answer(HTTPRequestHead(method: .get, target: "/metrics")) == .serve(.metrics, headOnly: false))
    }
}

struct WebSocketUploadMachineTests {
    let s: UInt64 = 1_000_000_000
    let id = UploadID(bytes: Array(0..<16))
    func machine(token: String? = nil, maxFileSize: UInt64 = 1000) -> WebSocketUploadMachine {
        WebSocketUploadMachine(configuration: .init(token: token, maxFileSize: maxFileSize, idleTimeout: 60 * s), now: 0)
    }
    func text(_ json: String) -> [UInt8] { Array(json.utf8) }
    func sent(_ a: WebSocketUploadMachine.Action) -> String? { if case .send(let t) = a { t } else { nil } }
    func closeCode(_ a: WebSocketUploadMachine.Action) -> UInt16? { if case .close(let c, _, _) = a { c } else { nil } }

    @Test func anUploadIsCreatedOpenedWrittenAndStored() {
        var m = machine()
        #expect(sent(m.start(nonce: [])) == #"{"type":"hello","version":1,"maxFileSize":1000,"auth":"none"}"#)
        #expect(m.textReceived(text(#"{"type":"begin","name":"a b.txt","size":10}"#), now: s) == .createUpload(name: "a b.txt", size: 10))
        #expect(m.hasUploadInProgress && m.isWaitingOnServer)
        #expect(m.uploadCreated(id) == .openUpload(id, offset: 0))
        #expect(sent(m.uploadOpened(offset: 0)) == #"{"type":"ready","id":"000102030405060708090a0b0c0d0e0f","offset":0}"#)
        #expect(!m.isWaitingOnServer)
        #expect(m.binaryReceived(4, now: s) == .write(4, last: false))
        #expect(m.binaryReceived(6, now: s) == .write(6, last: true))
        #expect(m.isWaitingOnServer)
        #expect(sent(m.uploadStored(name: "a b-1.txt")) == #"{"type":"stored","id":"000102030405060708090a0b0c0d0e0f","name":"a b-1.txt","size":10}"#)
        #expect(!m.hasUploadInProgress)
        #expect(m.textReceived(text(#"{"type":"begin","name":"next","size":0}"#), now: s) == .createUpload(name: "next", size: 0))
    }

    @Test func aResumeOfTheSameFileOpensAtTheHeldOffset() {
        var m = machine()
        _ = m.start(nonce: [])
        #expect(m.textReceived(text(#"{"type":"begin","name":"f","size":10,"resume":"000102030405060708090a0b0c0d0e0f"}"#), now: 0) == .lookUpUpload(id))
        #expect(m.lookedUp(name: "f", size: 10, held: 7) == .openUpload(id, offset: 7))
        #expect(sent(m.uploadOpened(offset: 7))?.contains(#""offset":7"#) == true)
        #expect(m.binaryReceived(4, now: 0) == .close(code: 1008, reason: "more bytes than the upload's size 10",
                                                       message: #"{"type":"error","code":"protocol_violation","message":"more bytes than the upload's size 10"}"#))
        #expect(m.isClosed)
    }

    @Test func aResumeOfAnotherFileOrAMissingOneStartsAfresh() {
        var m = machine()
        _ = m.start(nonce: [])
        _ = m.textReceived(text(#"{"type":"begin","name":"f","size":10,"resume":"000102030405060708090a0b0c0d0e0f"}"#), now: 0)
        #expect(m.lookedUp(name: "g", size: 10, held: 3) == .createUpload(name: "f", size: 10))
        var n = machine()
        _ = n.start(nonce: [])
        _ = n.textReceived(text(#"{"type":"begin","name":"f","size":10,"resume":"000102030405060708090a0b0c0d0e0f"}"#), now: 0)
        #expect(n.lookedUp(name: nil, size: 0, held: 0) == .createUpload(name: "f", size: 10))
    }

    @Test func anUploadWhoseBytesAreAllHeldIsStoredAtOnce() {
        var m = machine()
        _ = m.start(nonce: [])
        _ = m.textReceived(text(#"{"type":"begin","name":"f","size":10,"resume":"000102030405060708090a0b0c0d0e0f"}"#), now: 0)
        _ = m.lookedUp(name: "f", size: 10, held: 10)
        guard case .sendAndCommit(let ready) = m.uploadOpened(offset: 10) else { Issue.record("not stored at once"); return }
        #expect(ready.contains(#""offset":10"#))
    }

    @Test func refusalsAreAnsweredAndTheConnectionGoesOn() {
        var m = machine(maxFileSize: 100)
        _ = m.start(nonce: [])
        #expect(sent(m.textReceived(text(#"{"type":"begin","name":"big","size":101}"#), now: 0))?.contains(#""code":"file_too_large""#) == true)
        #expect(sent(m.textReceived(text(#"{"type":"begin","name":"","size":1}"#), now: 0))?.contains(#""code":"invalid_name""#) == true)
        _ = m.textReceived(text(#"{"type":"begin","name":"x","size":1}"#), now: 0)
        #expect(sent(m.uploadRefused(.uploadBusy))?.contains(#""code":"upload_busy""#) == true)
        #expect(!m.hasUploadInProgress && !m.isClosed)
    }

    @Test func protocolViolationsClose1008() {
        for (message, binary) in [("", 3), (#"{"type":"dance"}"#, 0), ("not json", 0), (#"{"type":"begin"}"#, 0)] {
            var m = machine()
            _ = m.start(nonce: [])
            let a = binary > 0 ? m.binaryReceived(binary, now: 0) : m.textReceived(text(message), now: 0)
            #expect(closeCode(a) == 1008, "\(message)")
            #expect(m.isClosed)
        }
        var m = machine()
        _ = m.start(nonce: [])
        _ = m.textReceived(text(#"{"type":"begin","name":"x","size":5}"#), now: 0)
        #expect(closeCode(m.textReceived(text(#"{"type":"begin","name":"y","size":5}"#), now: 0)) == 1008)
    }

    @Test func theTokenIsProvenByHMACOverTheNonce() {
        let nonce: [UInt8] = Array(repeating: 9, count: 32)
        var m = machine(token: "tok")
        let hello = sent(m.start(nonce: nonce))!
        #expect(hello.contains(#""auth":"hmac-sha256","nonce":""# + nonce.hexString))
        #expect(closeCode(m.textReceived(text(#"{"type":"begin","name":"x","size":1}"#), now: 0)) == 1008)
        var wrong = machine(token: "tok")
        _ = wrong.start(nonce: nonce)
        let bad = Authentication.response(token: "tik", nonce: nonce).hexString
        guard case .close(1008, let reason, let msg?) = wrong.textReceived(text(#"{"type":"auth","mac":"\#(bad)"}"#), now: 0) else { Issue.record("not closed"); return }
        #expect(reason == "authentication_failed" && msg.contains(#""code":"authentication_failed""#))
        var right = machine(token: "tok")
        _ = right.start(nonce: nonce)
        let mac = Authentication.response(token: "tok", nonce: nonce).hexString
        #expect(sent(right.textReceived(text(#"{"type":"auth","mac":"\#(mac)"}"#), now: 0)) == #"{"type":"welcome"}"#)
        #expect(right.textReceived(text(#"{"type":"begin","name":"x","size":1}"#), now: 0) == .createUpload(name: "x", size: 1))
    }

    @Test func idleClientsAreClosedAndUnansweredClosesHungUp() {
        var m = machine()
        _ = m.start(nonce: [])
        #expect(m.tick(now: 60 * s) == .none)
        #expect(closeCode(m.tick(now: 61 * s)) == 1001)
        #expect(m.tick(now: 62 * s) == .none)
        #expect(m.tick(now: 66 * s) == .none)
        #expect(m.tick(now: 68 * s) == .hangUp)
        var busy = machine()
        _ = busy.start(nonce: [])
        _ = busy.textReceived(text(#"{"type":"begin","name":"x","size":5}"#), now: 0)
        #expect(busy.tick(now: 100 * s) == .none)  // waiting on the server, not the client
    }

    @Test func drainClosesIdleConnectionsAndLetsAnUploadFinish() {
        var idle = machine()
        _ = idle.start(nonce: [])
        #expect(closeCode(idle.drain()) == 1001)
        var m = machine()
        _ = m.start(nonce: [])
        _ = m.textReceived(text(#"{"type":"begin","name":"x","size":2}"#), now: 0)
        _ = m.uploadCreated(id)
        _ = m.uploadOpened(offset: 0)
        #expect(m.drain() == .none)
        #expect(m.binaryReceived(2, now: 0) == .write(2, last: true))
        guard case .close(1001, _, let stored?) = m.uploadStored(name: "x") else { Issue.record("not closed after storing"); return }
        #expect(stored.contains(#""type":"stored""#))
    }

    @Test func aFailedWriteOrStoreCloses1011AndTheEndOfTheConnectionEndsTheUpload() {
        var m = machine()
        _ = m.start(nonce: [])
        _ = m.textReceived(text(#"{"type":"begin","name":"x","size":5}"#), now: 0)
        _ = m.uploadCreated(id)
        _ = m.uploadOpened(offset: 0)
        #expect(closeCode(m.uploadFailed(.storageFailed(reason: "disk"))) == 1011)
        var n = machine()
        _ = n.start(nonce: [])
        _ = n.textReceived(text(#"{"type":"begin","name":"x","size":5}"#), now: 0)
        #expect(n.connectionEnded() == .endUpload)
        #expect(n.connectionEnded() == .none)
        #expect(n.uploadCreated(id) == .none)
    }
}

struct WebSocketClientFramesTests {
    @Test func headsCarryTheLengthInTheFormItNeedsAndAZeroMask() {
        #expect(WebSocketClientFrames.head(opcode: 2, length: 5) == [0x82, 0x85, 0, 0, 0, 0])
        #expect(WebSocketClientFrames.head(opcode: 2, length: 126) == [0x82, 0xfe, 0, 126, 0, 0, 0, 0])
        #expect(WebSocketClientFrames.head(opcode: 2, length: 70_000) == [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0x11, 0x70, 0, 0, 0, 0])
        #expect(WebSocketClientFrames.text("hi") == [0x81, 0x82, 0, 0, 0, 0, 0x68, 0x69])
    }

    @Test func serverFramesAreReadOnlyWhenWhole() {
        let long = [UInt8](repeating: 7, count: 300)
        let bytes: [UInt8] = [0x81, 2, 0x68, 0x69] + [0x82, 126, 1, 44] + long + [0x88, 2, 0x03, 0xe8]
        guard let a = WebSocketClientFrames.serverFrame(in: bytes, at: 0) else { Issue.record("no frame"); return }
        #expect(a.opcode == 1 && Array(bytes[a.payload]) == [0x68, 0x69] && a.next == 4)
        guard let b = WebSocketClientFrames.serverFrame(in: bytes, at: a.next) else { Issue.record("no frame"); return }
        #expect(b.opcode == 2 && bytes[b.payload].count == 300)
        guard let c = WebSocketClientFrames.serverFrame(in: bytes, at: b.next) else { Issue.record("no frame"); return }
        #expect(c.opcode == 8 && c.next == bytes.count)
        for cut in 0..<bytes.count where cut != 4 && cut != b.next {
            let partial = Array(bytes[..<cut])
            var at = 0
            while let f = WebSocketClientFrames.serverFrame(in: partial, at: at) { at = f.next }
            #expect(at <= cut)
            #expect([0, 4, b.next].contains(at))
        }
    }
}
