import Testing
@testable import DataStreamCore

/// Transition-by-transition tests of the native client machine, and a conversation with the
/// server's own machine: no sockets, no files.
struct NativeClientMachineTests {
    typealias C = NativeClientMachine

    let id = UploadID(bytes: Array(1...16))

    func header(size: UInt64 = 5) -> FileHeader {
        FileHeader(uploadID: id, size: size, digest: .xxh3_128, name: "a.txt")
    }

    /// Feeds `bytes` to the client, returning every action that is not `.none`.
    func feed(_ c: inout C, _ bytes: [UInt8]) -> [C.Action] {
        var actions: [C.Action] = []
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let (taken, action) = c.bytesReceived(UnsafeRawBufferPointer(rebasing: raw[offset...]))
                offset += taken
                if action != .none { actions.append(action) }
            }
        }
        return actions
    }

    @Test func helloThenWelcomeWithoutChallengeAsksForAFile() {
        var c = C(token: nil)
        #expect(c.connected() == .send(Wire.hello()))
        #expect(feed(&c, Wire.welcome(nonce: nil)) == [.announceNextFile])
        #expect(c.announce(header()) == .send(Wire.file(header())))
    }

    @Test func challengeIsAnsweredWithTheTokensMAC() {
        var c = C(token: "s3cret")
        _ = c.connected()
        let nonce = Array(repeating: UInt8(7), count: 32)
        #expect(feed(&c, Wire.welcome(nonce: nonce)) == [.send(Wire.auth(mac: Authentication.response(token: "s3cret", nonce: nonce)))])
        #expect(feed(&c, Wire.authOK()) == [.announceNextFile])
    }

    @Test func challengeWithoutATokenFails() {
        var c = C(token: nil)
        _ = c.connected()
        #expect(feed(&c, Wire.welcome(nonce: Array(repeating: 1, count: 32))) == [.fail(.tokenRequired)])
        // Failed: later frames change nothing.
        #expect(feed(&c, Wire.authOK()) == [])
    }

    @Test func framesSplitAcrossReadsAreJoined() {
        var c = C(token: nil)
        _ = c.connected()
        let welcome = Wire.welcome(nonce: nil)
        #expect(feed(&c, Array(welcome[0..<3])) == [])
        #expect(feed(&c, Array(welcome[3...])) == [.announceNextFile])
    }

    @Test func readyResumesWithinTheFileOnly() {
        var c = C(token: nil)
        _ = c.connected()
        _ = feed(&c, Wire.welcome(nonce: nil))
        _ = c.announce(header(size: 10))
        #expect(feed(&c, Wire.ready(uploadID: id, offset: 4)) == [.stream(from: 4)])

        var past = C(token: nil)
        _ = past.connected()
        _ = feed(&past, Wire.welcome(nonce: nil))
        _ = past.announce(header(size: 10))
        #expect(feed(&past, Wire.ready(uploadID: id, offset: 11)) == [.fail(.protocolViolation("server asked to resume at 11, past the end"))])
    }

    @Test func freshOnlyClientRefusesAResume() {
        var c = C(token: nil, resumeAllowed: false)
        _ = c.connected()
        _ = feed(&c, Wire.welcome(nonce: nil))
        _ = c.announce(header(size: 10))
        guard case .fail(.protocolViolation) = feed(&c, Wire.ready(uploadID: id, offset: 3)).first else {
            Issue.record("a resume was accepted")
            return
        }
    }

    @Test func resultBeforeReadyFinishesTheFile() {
        var c = C(token: nil)
        _ = c.connected()
        _ = feed(&c, Wire.welcome(nonce: nil))
        _ = c.announce(header())
        let r = UploadResult(uploadID: id, status: .stored, digestAlgorithm: .xxh3_128, digest: [1, 2], storedName: "a.txt", message: "stored")
        #expect(feed(&c, Wire.result(r)) == [.finished(r)])
        // Ready for the next file.
        #expect(c.announce(header()) == .send(Wire.file(header())))
    }

    @Test func errorAndUnexpectedFramesFail() {
        var c = C(token: nil)
        _ = c.connected()
        #expect(feed(&c, Wire.error(.uploadBusy)) == [.fail(.serverError(code: ProtocolError.uploadBusy.code, message: ProtocolError.uploadBusy.description))])

        var d = C(token: nil)
        _ = d.connected()
        #expect(feed(&d, Wire.authOK()) == [.fail(.protocolViolation("unexpected frame 0x4 from the server"))])
    }

    @Test func oversizedFrameFails() {
        var c = C(token: nil)
        _ = c.connected()
        let huge: [UInt8] = [Wire.FrameType.welcome.rawValue, 0x7f, 0, 0, 0]
        #expect(feed(&c, huge) == [.fail(.protocolViolation("server sent a frame of \(0x7f00_0000) bytes"))])
    }

    /// The client and the server's machine, each fed what the other sends: HELLO to RESULT,
    /// with the authentication challenge.
    @Test func conversationWithTheServersMachine() {
        var client = C(token: "t")
        var server = ConnectionStateMachine(configuration: .init(token: "t"))
        var toServer: [UInt8] = []
        func take(_ a: C.Action) -> C.Action {
            if case .send(let bytes) = a { toServer += bytes; return .none }
            return a
        }
        _ = take(client.connected())
        var log: [String] = []
        var pending: C.Action = .none
        for _ in 0..<20 {
            // The server reads what the client sent; its replies go back to the client.
            var replies: [UInt8] = []
            toServer.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let step = server.bytesReceived(UnsafeRawBufferPointer(rebasing: raw[offset...]))
                    offset += step.consumed
                    switch step.action {
                    case .send(let b): replies += b
                    case .openUpload(let h): log.append("open \(h.name)"); if case .send(let b) = server.uploadOpened(heldBytes: 0) { replies += b }
                    case .verifyUpload: log.append("verify"); if case .commitUpload = server.digestComputed(Array(repeating: 9, count: 16)) {
                        if case .send(let b) = server.uploadCommitted(storedName: "a.txt") { replies += b }
                    }
                    default: break
                    }
                    if step.consumed == 0 { break }
                }
            }
            toServer = []
            for a in feed(&client, replies) {
                switch take(a) {
                case .announceNextFile: _ = take(client.announce(header(size: 0)))
                case .stream(let from): log.append("stream \(from)"); _ = take(client.streamed(digest: Array(repeating: 9, count: 16)))
                case .finished(let r): log.append("finished \(r.status) \(r.storedName)"); pending = .finished(r)
                case .fail(let f): log.append("fail \(f)")
                default: break
                }
            }
            if case .finished = pending { break }
        }
        #expect(log == ["open a.txt", "stream 0", "verify", "finished stored a.txt"])
    }
}
