import Testing
@testable import DataStreamCore

/// Transition-by-transition tests of UDP admission: cookies, caps and checks, no sockets.
struct UDPAdmissionTests {
    typealias A = UDPAdmission
    let alice: [UInt8] = [127, 0, 0, 1]
    let bob: [UInt8] = [127, 0, 0, 2]

    func limits(_ change: (inout A.Limits) -> Void = { _ in }) -> A.Limits {
        var l = A.Limits()
        change(&l)
        return l
    }

    /// A START carrying the cookie `a` issued to `source` at `now`.
    func start(_ a: A, source: [UInt8], size: UInt64 = 10_000, chunk: UInt16 = 1200, nonce: UInt64 = 1, now: UInt32 = 100, token: String? = nil) -> UDPWire.Start {
        let c = a.cookie(for: .init(clientNonce: nonce, chunkSize: chunk), source: source, now: now)
        let mac = token.map { HandshakeCookie.authentication(token: $0, cookie: c.cookie, clientNonce: nonce) } ?? []
        return UDPWire.Start(clientNonce: nonce, cookie: c.cookie, chunkSize: c.chunkSize,
                             file: FileHeader(uploadID: UploadID(bytes: Array(repeating: 1, count: 16)), size: size, digest: .xxh3_128, name: ""), mac: mac)
    }

    @Test func cookieIsBoundToItsSourceAndExpires() {
        let a = A(limits: limits())
        let s = start(a, source: alice, now: 100)
        #expect(a.cookieIsValid(s, source: alice, now: 100))
        #expect(!a.cookieIsValid(s, source: bob, now: 100))
        #expect(!a.cookieIsValid(s, source: alice, now: 100 + 3_600))
        var forged = s
        forged.cookie[0] ^= 1
        #expect(!a.cookieIsValid(forged, source: alice, now: 100))
    }

    @Test func cookieClampsTheChunkSizeAndSaysWhetherATokenIsNeeded() {
        let a = A(limits: limits { $0.token = "t" })
        let big = a.cookie(for: .init(clientNonce: 1, chunkSize: UInt16.max), source: alice, now: 0)
        #expect(Int(big.chunkSize) == UDPWire.maximumChunkSize)
        #expect(big.authenticationRequired)
        let tiny = a.cookie(for: .init(clientNonce: 1, chunkSize: 1), source: alice, now: 0)
        #expect(Int(tiny.chunkSize) == UDPWire.minimumChunkSize)
    }

    @Test func admitsAndSanitisesTheName() {
        var a = A(limits: limits())
        let s = start(a, source: alice, size: 10_000, chunk: 1200)
        guard case .admit(let g) = a.start(s, nameBytes: Array("dir/../x.txt".utf8), host: alice, draining: false) else {
            Issue.record("refused")
            return
        }
        #expect(g.chunkSize == 1200)
        #expect(g.windowChunks == 64)  // at least 64 chunks, however small the file
        #expect(g.ringBytes == 64 * 1200)
        #expect(!g.name.contains("/"))
        #expect(a.nativeUploadsInProgress == 1)
    }

    @Test func tokenIsChecked() {
        var a = A(limits: limits { $0.token = "t" })
        #expect(a.start(start(a, source: alice), nameBytes: Array("x".utf8), host: alice, draining: false) == .refuse(.authenticationRequired))
        #expect(a.start(start(a, source: alice, token: "wrong"), nameBytes: Array("x".utf8), host: alice, draining: false) == .refuse(.authenticationFailed))
        guard case .admit = a.start(start(a, source: alice, token: "t"), nameBytes: Array("x".utf8), host: alice, draining: false) else {
            Issue.record("the right token was refused")
            return
        }
    }

    @Test func sizeDrainAndChunkChecks() {
        var a = A(limits: limits { $0.maxFileSize = 1_000 })
        #expect(a.start(start(a, source: alice, size: 1_001), nameBytes: Array("x".utf8), host: alice, draining: false) == .refuse(.fileTooLarge(size: 1_001, limit: 1_000)))
        #expect(a.start(start(a, source: alice, size: 10), nameBytes: Array("x".utf8), host: alice, draining: true) == .refuse(.shuttingDown))
        var b = A(limits: limits())
        var s = start(b, source: alice)
        s.chunkSize = 10
        guard case .refuse(.malformedFrame) = b.start(s, nameBytes: Array("x".utf8), host: alice, draining: false) else {
            Issue.record("a chunk size under the minimum was admitted")
            return
        }
        #expect(b.nativeUploadsInProgress == 0)
    }

    @Test func capsInAllAndPerAddressAreGivenBackWithTheSlot() {
        var a = A(limits: limits { $0.maxSessions = 3; $0.maxSessionsPerAddress = 2 })
        func admit(_ host: [UInt8]) -> A.Decision { a.start(start(a, source: host), nameBytes: Array("x".utf8), host: host, draining: false) }
        guard case .admit = admit(alice), case .admit = admit(alice) else { Issue.record("refused under the caps"); return }
        #expect(admit(alice) == .refuse(.serverBusy(reason: "2 UDP uploads at once from this address, its limit")))  // per address
        guard case .admit = admit(bob) else { Issue.record("another address refused"); return }
        #expect(admit(bob) == .refuse(.serverBusy(reason: "3 UDP uploads at once, the server's limit")))  // in all
        a.slotReleased(host: alice)
        guard case .admit = admit(alice) else { Issue.record("a released slot was not given back"); return }
    }

    @Test func lingeringSessionsAreCappedToo() {
        var a = A(limits: limits { $0.maxSessions = 1; $0.lingeringFactor = 2 })
        func admit() -> A.Decision { a.start(start(a, source: alice), nameBytes: Array("x".utf8), host: alice, draining: false) }
        guard case .admit = admit() else { Issue.record("refused"); return }
        a.slotReleased(host: alice)  // finished, lingering
        guard case .admit = admit() else { Issue.record("refused"); return }
        a.slotReleased(host: alice)
        #expect(admit() == .refuse(.serverBusy(reason: "1 UDP uploads at once, the server's limit")))  // two held, lingering
        a.sessionRemoved()
        guard case .admit = admit() else { Issue.record("a removed session still counted"); return }
    }

    @Test func ringMemoryIsBudgeted() {
        var a = A(limits: limits { $0.memoryBudget = 100 * 1200 })
        guard case .admit(let g) = a.start(start(a, source: alice), nameBytes: Array("x".utf8), host: alice, draining: false) else {
            Issue.record("refused")
            return
        }
        guard case .refuse(.serverBusy) = a.start(start(a, source: bob), nameBytes: Array("x".utf8), host: bob, draining: false) else {
            Issue.record("admitted past the ring budget")
            return
        }
        a.ringReleased(g.ringBytes)
        guard case .admit = a.start(start(a, source: bob), nameBytes: Array("x".utf8), host: bob, draining: false) else {
            Issue.record("released ring memory was not given back")
            return
        }
    }

    @Test func seedSourcesAreCheckedInOrderAndCappedPerAddress() {
        var a = A(limits: limits { $0.maxSeedSessions = 3; $0.maxSeedSessionsPerAddress = 2; $0.maxFileSize = 100 })
        #expect(a.seedStart(size: 10, host: alice, draining: true) == .shuttingDown)
        #expect(a.seedStart(size: 101, host: alice, draining: false) == .fileTooLarge(size: 101, limit: 100))
        #expect(a.seedStart(size: 100, host: alice, draining: false) == nil)
        #expect(a.seedStart(size: 100, host: alice, draining: false) == nil)
        // One host cannot take every slot: its third is refused, another host's is not.
        #expect(a.seedStart(size: 1, host: alice, draining: false) == .tooManySeedSessionsFromAddress(2))
        #expect(a.seedStart(size: 1, host: bob, draining: false) == nil)
        #expect(a.seedStart(size: 1, host: bob, draining: false) == .tooManySeedSessions(3))
        a.seedEnded(host: alice)
        #expect(a.seedStart(size: 1, host: alice, draining: false) == nil)
        var off = A(limits: limits { $0.seedProtocolAllowed = false })
        #expect(off.seedStart(size: 1, host: alice, draining: false) == .seedProtocolDisabled)
    }

    @Test func aRefusalSaysWhichCapWasReached() {
        var a = A(limits: limits { $0.maxSessions = 2; $0.maxSessionsPerAddress = 1 })
        guard case .admit = a.start(start(a, source: alice), nameBytes: Array("x".utf8), host: alice, draining: false) else { Issue.record("refused"); return }
        guard case .refuse(.serverBusy(let perAddress)) = a.start(start(a, source: alice), nameBytes: Array("x".utf8), host: alice, draining: false) else {
            Issue.record("not refused as busy")
            return
        }
        #expect(perAddress.contains("from this address"))
        guard case .admit = a.start(start(a, source: bob), nameBytes: Array("x".utf8), host: bob, draining: false) else { Issue.record("refused"); return }
        guard case .refuse(.serverBusy(let inAll)) = a.start(start(a, source: [127, 0, 0, 3]), nameBytes: Array("x".utf8), host: [127, 0, 0, 3], draining: false) else {
            Issue.record("not refused as busy")
            return
        }
        #expect(inAll.contains("the server's limit"))
        #expect(ProtocolError.serverBusy(reason: inAll).code == 24)
    }
}
