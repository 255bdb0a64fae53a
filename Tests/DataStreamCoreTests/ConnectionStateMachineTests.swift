import Testing
@testable import DataStreamCore

/// Transition-by-transition tests of the connection machine: no sockets, no files.
struct ConnectionStateMachineTests {
    typealias M = ConnectionStateMachine

    func feed(_ m: inout M, _ bytes: [UInt8]) -> [M.Step] {
        var steps: [M.Step] = []
        var offset = 0
        bytes.withUnsafeBytes { raw in
            while offset < raw.count {
                let step = m.bytesReceived(UnsafeRawBufferPointer(rebasing: raw[offset...]))
                steps.append(step)
                offset += step.consumed
                if step.action == .wait { break }
                if case .close = step.action { break }
                if step.consumed == 0 && step.action == .none { break }
            }
        }
        return steps
    }

    func native(token: String? = nil, maxFileSize: UInt64 = 1 << 40) -> M {
        var m = M(configuration: .init(token: token, maxFileSize: maxFileSize))
        let steps = feed(&m, Wire.hello())
        #expect(m.stateName == (token == nil ? "awaitingHeader" : "authenticating"))
        guard case .send(let welcome) = steps.last?.action else {
            Issue.record("no WELCOME")
            return m
        }
        #expect(welcome[0] == Wire.FrameType.welcome.rawValue)
        return m
    }

    let id = UploadID(bytes: Array(1...16))

    func header(size: UInt64 = 10, name: String = "a.txt", digest: DigestAlgorithm = .xxh3_128) -> FileHeader {
        FileHeader(uploadID: id, size: size, digest: digest, name: name)
    }

    // MARK: seed

    @Test func seedSizeAndDataInOneRead() {
        var m = M(configuration: .init())
        let steps = feed(&m, Array("5hello".utf8))
        #expect(steps[0].action == .startSeedUpload(declaredSize: 5))
        #expect(steps[0].consumed == 1)
        #expect(steps[1] == M.Step(consumed: 5, fileBytes: 5, action: .finishSeedUpload(filePrefix: [], size: 5)))
        #expect(m.stateName == "seedFinishing")
        #expect(m.seedStored() == .close(reply: nil, reason: nil, partial: .none))
        #expect(m.stateName == "closed")
        #expect(m.endOfStream() == .none)
    }

    /// Bytes past a complete seed upload name the declared size and what arrived, not 0.
    @Test func bytesPastACompleteSeedUploadNameTheDeclaredSize() {
        var m = M(configuration: .init())
        let steps = feed(&m, Array("3abcdef".utf8))
        #expect(steps.contains { $0.action == .finishSeedUpload(filePrefix: [], size: 3) })
        #expect(steps.last?.action == .close(reply: nil, reason: .trailingBytes(declared: 3, received: 6), partial: .discard))
        #expect(ProtocolError.trailingBytes(declared: 3, received: 6).description == "received 6 bytes, more than the declared 3")
    }

    /// Digits alone in a read are the size, whole: a read that holds more than digits begins
    /// the file. A client that wrote "1" and then "2abcdefghijkl" sent size 1 and 13 bytes.
    /// A connection refused before it spoke is answered by its first byte: a native client gets
    /// the ERROR frame, a seed client nothing (its protocol has no reply).
    @Test func aRefusalRepliesOnlyToNativeClients() {
        let error = ProtocolError.tooManyConnections(limit: 1)
        #expect(M.refusal(error, firstByte: UInt8(ascii: "5")) == nil)
        #expect(M.refusal(error, firstByte: UInt8(ascii: "0")) == nil)
        #expect(M.refusal(error, firstByte: Wire.hello()[0]) == Wire.error(error))
    }

    @Test func seedDigitsSplitAcrossReads() {
        var m = M(configuration: .init())
        #expect(feed(&m, Array("1".utf8)).last?.action == M.Action.none)
        #expect(m.stateName == "seedSize")
        let steps = feed(&m, Array("2abcdefghijkl".utf8))
        #expect(steps[0].action == .startSeedUpload(declaredSize: 1))
        #expect(steps.last?.action == .close(reply: nil, reason: .trailingBytes(declared: 1, received: 13), partial: .discard))
    }

    /// The seed client writes its size apart from the file. When the digits end with a read and
    /// the next read begins with a non-digit, the size is the whole run: "25" then "h" then the
    /// client's end is an upload of 25 cut short, not a whole "5h" (issue 21, item 3).
    @Test func aSizeThatEndedItsReadIsTheWholeRunSoACutShortUploadIsBroken() {
        var m = M(configuration: .init())
        #expect(feed(&m, Array("25".utf8)).last?.action == M.Action.none)
        let steps = feed(&m, Array("h".utf8))
        #expect(steps[0] == M.Step(consumed: 0, action: .startSeedUpload(declaredSize: 25)))
        #expect(steps[1].fileBytes == 1)
        #expect(m.seedSizeRange == 25...25)
        #expect(m.endOfStream() == .close(reply: nil, reason: .unexpectedEndOfStream(received: 1, expected: 25), partial: .discard))
    }

    /// The same bytes in one read cannot be told apart from a whole 2-byte "5h": stored as
    /// that, as docs/PROTOCOL.md §1.1 says.
    @Test func aSizeAndFileInOneReadStillFollowTheSplitRule() {
        var m = M(configuration: .init())
        #expect(feed(&m, Array("25h".utf8)).first?.action == .startSeedUpload(declaredSize: 25))
        #expect(m.endOfStream() == .finishSeedUpload(filePrefix: SeedDigits("5".utf8), size: 2))
    }

    /// The size ends with the reads that held digits only, however many: the read that holds
    /// more than digits begins the file, even when the file begins with digits (a log file's
    /// timestamp). So a cut-short log file is not stored either.
    @Test func theSizeEndsWithTheReadsThatHeldDigitsOnly() {
        var m = M(configuration: .init())
        _ = feed(&m, Array("1".utf8))
        _ = feed(&m, Array("2".utf8))
        let steps = feed(&m, Array("abcdefghijkl".utf8))
        #expect(steps[0].action == .startSeedUpload(declaredSize: 12))
        #expect(steps[1].action == .finishSeedUpload(filePrefix: [], size: 12))
        var log = M(configuration: .init())
        _ = feed(&log, Array("6".utf8))
        let logSteps = feed(&log, Array("123abc".utf8))
        #expect(logSteps.last?.action == .finishSeedUpload(filePrefix: [], size: 6))
        // "10250" then 1,024 bytes of a log: as one read the split "1025" fits (a 1,025-byte
        // file); with the size alone in its read, it is an upload of 10,250 cut short.
        let block = Array(String(repeating: "2026-12-02 12:00:00 log line\n", count: 40).utf8.prefix(1024))
        var cut = M(configuration: .init())
        _ = feed(&cut, Array("10250".utf8))
        _ = feed(&cut, block)
        #expect(cut.endOfStream() == .close(reply: nil, reason: .unexpectedEndOfStream(received: 1024, expected: 10250), partial: .discard))
        var together = M(configuration: .init())
        _ = feed(&together, Array("10250".utf8) + block)
        #expect(together.endOfStream() == .finishSeedUpload(filePrefix: SeedDigits("02026".utf8), size: 1025))
        // Digits only, then the end: the split rule, as a file of digits needs.
        var digitsOnly = M(configuration: .init())
        _ = feed(&digitsOnly, Array("3".utf8))
        _ = feed(&digitsOnly, Array("123".utf8))
        #expect(digitsOnly.endOfStream() == .finishSeedUpload(filePrefix: SeedDigits("123".utf8), size: 3))
    }

    @Test func seedFileStartingWithDigitsWaitsForEOF() {
        var m = M(configuration: .init())
        let steps = feed(&m, Array("512abc".utf8))
        #expect(steps[0].action == .startSeedUpload(declaredSize: 512))
        #expect(steps[1].fileBytes == 3)
        #expect(m.stateName == "seedReceiving")
        #expect(m.endOfStream() == .finishSeedUpload(filePrefix: SeedDigits("12".utf8), size: 5))
    }

    @Test func seedCloseBeforeTheSizeIsBroken() {
        var m = M(configuration: .init())
        _ = feed(&m, Array("100abc".utf8))
        #expect(m.endOfStream() == .close(reply: nil, reason: .unexpectedEndOfStream(received: 3, expected: 100), partial: .discard))
    }

    @Test func seedBytesBeyondTheSizeAreBroken() {
        var m = M(configuration: .init())
        let steps = feed(&m, Array("3abcdef".utf8))
        #expect(steps[1].action == .finishSeedUpload(filePrefix: [], size: 3))
        #expect(steps[1].consumed == 3)
        // The rest of the same read: trailing bytes while finishing.
        guard case .close(nil, .trailingBytes?, .discard) = steps[2].action else {
            Issue.record("expected a close for trailing bytes, got \(steps[2].action)")
            return
        }
        #expect(m.stateName == "failed")
    }

    @Test func seedSizeTooLargeIsRefused() {
        var m = M(configuration: .init(maxFileSize: 5))
        let steps = feed(&m, Array("99999x".utf8))
        #expect(steps.last?.action == .close(reply: nil, reason: .invalidSeedSize(digits: "99999"), partial: .none))
    }

    @Test func seedWriteFailureDiscards() {
        var m = M(configuration: .init())
        _ = feed(&m, Array("100abc".utf8))
        #expect(m.uploadFailed(.storageFailed(reason: "ENOSPC")) == .close(reply: nil, reason: .storageFailed(reason: "ENOSPC"), partial: .discard))
    }

    // MARK: native

    @Test func fullNativeUpload() {
        var m = native()
        var steps = feed(&m, Wire.file(header()))
        #expect(steps.last?.action == .openUpload(header()))
        #expect(m.stateName == "opening")
        // Bytes that arrive while opening are held.
        steps = feed(&m, [1, 2, 3])
        #expect(steps.last == M.Step(consumed: 0, action: .wait))
        #expect(m.uploadOpened(heldBytes: 0) == .send(Wire.ready(uploadID: id, offset: 0)))
        #expect(m.stateName == "receiving")
        let digest = Array(repeating: UInt8(7), count: 16)
        steps = feed(&m, Array(repeating: 0x41, count: 10) + Wire.end(digest: digest))
        #expect(steps[0] == M.Step(consumed: 10, fileBytes: 10))
        #expect(steps.last?.action == .verifyUpload)
        #expect(m.stateName == "verifying")
        #expect(m.digestComputed(digest) == .commitUpload)
        #expect(m.stateName == "finalising")
        guard case .send(let reply) = m.uploadCommitted(storedName: "a.txt") else {
            Issue.record("no RESULT")
            return
        }
        let result = try? Wire.decodeResult(reply[5...])
        #expect(result?.status == .stored)
        #expect(result?.storedName == "a.txt")
        #expect(m.stateName == "awaitingHeader")
        #expect(feed(&m, Wire.bye()).last?.action == .close(reply: nil, reason: nil, partial: .none))
    }

    @Test func resumedUploadGetsReadyAtHeldOffset() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 100)))
        #expect(m.uploadOpened(heldBytes: 60) == .send(Wire.ready(uploadID: id, offset: 60)))
        let steps = feed(&m, Array(repeating: 1, count: 40))
        #expect(steps[0].fileBytes == 40)
        #expect(m.stateName == "awaitingEnd")
    }

    @Test func completeHeldUploadSkipsStraightToEnd() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 100)))
        _ = m.uploadOpened(heldBytes: 100)
        #expect(m.stateName == "awaitingEnd")
    }

    @Test func digestMismatchDiscardsAndRepliesThenContinues() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 1)))
        _ = m.uploadOpened(heldBytes: 0)
        _ = feed(&m, [9] + Wire.end(digest: Array(repeating: 1, count: 16)))
        guard case .discardUpload(let reply) = m.digestComputed(Array(repeating: 2, count: 16)) else {
            Issue.record("expected a discard")
            return
        }
        #expect((try? Wire.decodeResult(reply[5...]))?.status == .digestMismatch)
        #expect(m.stateName == "awaitingHeader")
    }

    @Test func openFailureRepliesWithResultAndContinues() {
        var m = native()
        _ = feed(&m, Wire.file(header()))
        guard case .send(let reply) = m.uploadOpenFailed(.uploadBusy) else {
            Issue.record("expected a RESULT")
            return
        }
        #expect((try? Wire.decodeResult(reply[5...]))?.status == .rejected)
        #expect(m.stateName == "awaitingHeader")
    }

    @Test func commitFailureRepliesStorageFailed() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 1)))
        _ = m.uploadOpened(heldBytes: 0)
        let d = Array(repeating: UInt8(3), count: 16)
        _ = feed(&m, [1] + Wire.end(digest: d))
        _ = m.digestComputed(d)
        guard case .send(let reply) = m.uploadFailed(.storageFailed(reason: "ENOSPC")) else {
            Issue.record("expected a RESULT")
            return
        }
        #expect((try? Wire.decodeResult(reply[5...]))?.status == .storageFailed)
    }

    @Test func endOfStreamMidFileKeepsThePartial() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 100)))
        _ = m.uploadOpened(heldBytes: 0)
        _ = feed(&m, Array(repeating: 1, count: 30))
        #expect(m.endOfStream() == .close(reply: nil, reason: .unexpectedEndOfStream(received: 30, expected: 100), partial: .keep))
        #expect(m.digestComputed([]) == .none)
    }

    @Test func peerCloseWhileVerifyingStillStores() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 1)))
        _ = m.uploadOpened(heldBytes: 0)
        let d = Array(repeating: UInt8(3), count: 16)
        _ = feed(&m, [1] + Wire.end(digest: d))
        #expect(m.endOfStream() == .none)
        #expect(m.digestComputed(d) == .commitUpload)
        #expect(m.uploadCommitted(storedName: "a.txt") == .close(reply: nil, reason: nil, partial: .none))
    }

    @Test func connectionResetMidFileKeepsThePartial() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 100)))
        _ = m.uploadOpened(heldBytes: 0)
        #expect(m.connectionFailed("ECONNRESET") == .close(reply: nil, reason: .connectionFailed(reason: "ECONNRESET"), partial: .keep))
    }

    // MARK: authentication

    @Test func tokenAuthentication() {
        var m = M(configuration: .init(token: "secret"))
        let steps = feed(&m, Wire.hello())
        guard case .send(let welcome) = steps.last?.action, let (_, nonce) = try? Wire.decodeWelcome(welcome[5...]), let nonce else {
            Issue.record("no nonce")
            return
        }
        let ok = feed(&m, Wire.auth(mac: Authentication.response(token: "secret", nonce: nonce)))
        #expect(ok.last?.action == .send(Wire.authOK()))
        #expect(m.stateName == "awaitingHeader")
    }

    @Test func wrongTokenIsRefused() {
        var m = native(token: "secret")
        let steps = feed(&m, Wire.auth(mac: Authentication.response(token: "guess", nonce: Authentication.nonce())))
        #expect(steps.last?.action == .close(reply: Wire.error(.authenticationFailed), reason: .authenticationFailed, partial: .none))
    }

    @Test func fileBeforeAuthenticationIsRefused() {
        var m = native(token: "secret")
        let steps = feed(&m, Wire.file(header()))
        #expect(steps.last?.action == .close(reply: Wire.error(.authenticationRequired), reason: .authenticationRequired, partial: .none))
    }

    // MARK: malformed input

    /// HELLO is as strict as PROTOCOL.md says: unknown flags, reserved bits or trailing bytes
    /// are refused (ERROR 1), never answered WELCOME.
    @Test func helloWithUnknownFlagsReservedBitsOrTrailingBytesIsRefused() {
        let cases: [[UInt8]] = [
            Wire.hello(flags: 0x80),
            Wire.frame(.hello, Wire.magic + [Wire.version, 0, 0, 1]),
            Wire.frame(.hello, Wire.magic + [Wire.version, 0, 0, 0] + [UInt8](repeating: 7, count: 60_000)),
            Wire.frame(.hello, Wire.magic + [Wire.version, 0, 0]),
        ]
        for hello in cases {
            var m = M(configuration: .init())
            let steps = feed(&m, hello)
            guard case .close(let reply?, .malformedFrame(let type, _)?, .none) = steps.last?.action else {
                Issue.record("HELLO of \(hello.count) bytes not refused: \(String(describing: steps.last?.action))")
                continue
            }
            #expect(type == Wire.FrameType.hello.rawValue)
            #expect(reply.first == Wire.FrameType.error.rawValue)
        }
        var ok = M(configuration: .init())
        #expect(feed(&ok, Wire.hello()).last?.action == .send(Wire.welcome(nonce: nil)))
    }

    @Test func badMagicAndVersion() {
        var m = M(configuration: .init())
        var steps = feed(&m, [0x01, 0, 0, 0, 8] + Array("XXXX".utf8) + [1, 0, 0, 0])
        #expect(steps.last?.action == .close(reply: Wire.error(.badMagic), reason: .badMagic, partial: .none))
        m = M(configuration: .init())
        steps = feed(&m, [0x01, 0, 0, 0, 8] + Wire.magic + [9, 0, 0, 0])
        #expect(steps.last?.action == .close(reply: Wire.error(.unsupportedVersion(9)), reason: .unsupportedVersion(9), partial: .none))
    }

    @Test func frameTooLarge() {
        var m = native()
        let steps = feed(&m, [0x10, 0x7F, 0xFF, 0xFF, 0xFF])
        #expect(steps.last?.action == .close(reply: Wire.error(.frameTooLarge(length: 0x7FFF_FFFF, limit: Wire.maxControlPayload)), reason: .frameTooLarge(length: 0x7FFF_FFFF, limit: Wire.maxControlPayload), partial: .none))
    }

    @Test func truncatedFileFrame() {
        var m = native()
        let steps = feed(&m, [0x10, 0, 0, 0, 3, 1, 2, 3])
        guard case .close(let reply?, .malformedFrame?, .none) = steps.last?.action else {
            Issue.record("expected malformedFrame, got \(String(describing: steps.last))")
            return
        }
        #expect(reply[0] == Wire.FrameType.error.rawValue)
    }

    @Test func unexpectedFrameType() {
        var m = native()
        let steps = feed(&m, Wire.end(digest: []))
        guard case .close(_, .unexpectedFrame?, .none) = steps.last?.action else {
            Issue.record("expected unexpectedFrame")
            return
        }
    }

    @Test func oversizedNameAndFileAndDigest() {
        var m = native()
        var steps = feed(&m, Wire.file(header(name: String(repeating: "n", count: 300))))
        guard case .close(_, .invalidName?, .none) = steps.last?.action else { Issue.record("name"); return }
        m = native(maxFileSize: 5)
        steps = feed(&m, Wire.file(header(size: 6)))
        #expect(steps.last?.action == .close(reply: Wire.error(.fileTooLarge(size: 6, limit: 5)), reason: .fileTooLarge(size: 6, limit: 5), partial: .none))
        m = native()
        var frame = Wire.file(header())
        frame[5 + 16 + 8] = 99 // the digest algorithm byte
        steps = feed(&m, frame)
        #expect(steps.last?.action == .close(reply: Wire.error(.unsupportedDigest(99)), reason: .unsupportedDigest(99), partial: .none))
    }

    @Test func wrongDigestLengthInEnd() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 1)))
        _ = m.uploadOpened(heldBytes: 0)
        let steps = feed(&m, [1] + Wire.end(digest: [1, 2]))
        guard case .close(_, .malformedFrame?, .keep) = steps.last?.action else { Issue.record("END"); return }
    }

    @Test func frameSplitByteByByte() {
        var m = M(configuration: .init())
        var last: M.Step?
        for b in Wire.hello() {
            last = feed(&m, [b]).last
        }
        #expect(m.stateName == "awaitingHeader")
        #expect(last?.action == .send(Wire.welcome(nonce: nil)))
    }

    @Test func traversalNameIsSanitisedInTheOpenAction() {
        var m = native()
        let steps = feed(&m, Wire.file(header(name: "../../x")))
        #expect(steps.last?.action == .openUpload(header(name: "___.._x")))
    }

    // MARK: - File bytes moved straight to the file (a drain)

    @Test func seedBytesMovedDirectlyFinishLikeReceivedOnes() {
        var m = M(configuration: .init(maxFileSize: 1 << 40))
        _ = feed(&m, Array("100x".utf8))   // size 100, first file byte "x"
        #expect(m.fileBytesExpected == 99)
        #expect(m.fileBytesMovedDirectly(0) == .none)
        #expect(m.fileBytesMovedDirectly(40) == .none)
        #expect(m.fileBytesExpected == 59)
        #expect(m.fileBytesMovedDirectly(59) == .finishSeedUpload(filePrefix: [], size: 100))
        #expect(m.fileBytesExpected == 0)
        // One more byte after the last: broken, the partial is discarded.
        let steps = feed(&m, Array("y".utf8))
        guard case .close(_, let reason, let partial) = steps.last?.action else { Issue.record("no close"); return }
        #expect(partial == .discard)
        #expect(reason == .trailingBytes(declared: 100, received: 101))
    }

    @Test func nativeBytesMovedDirectlyLeadToAwaitingEnd() {
        var m = native()
        _ = feed(&m, Wire.file(header(size: 1000)))
        _ = m.uploadOpened(heldBytes: 0)
        #expect(m.fileBytesExpected == 1000)
        #expect(m.fileBytesMovedDirectly(600) == .none)
        #expect(m.stateName == "receiving")
        #expect(m.fileBytesMovedDirectly(400) == .none)
        #expect(m.stateName == "awaitingEnd")
        #expect(m.fileBytesExpected == 0)
        // What follows is the END frame, read normally (more file bytes would break the
        // driver's contract, which the machine traps).
    }
}
