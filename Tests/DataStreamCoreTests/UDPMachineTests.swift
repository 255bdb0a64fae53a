import Testing
@testable import DataStreamCore

/// The UDP wire format and the UDP state machines, event by event: no sockets, no files.
struct UDPWireTests {
    func with<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) -> R) -> R { bytes.withUnsafeBytes(body) }

    @Test func classifiesSeedAndNativeDatagrams() {
        #expect(with(Array("1048576".utf8)) { UDPWire.classify($0) } == .seedSize(1_048_576))
        #expect(with(Array("0".utf8)) { UDPWire.classify($0) } == .seedSize(0))
        #expect(with(Array("EOF".utf8)) { UDPWire.classify($0) } == .seedEnd)
        #expect(with(Array("EOF\n".utf8)) { UDPWire.classify($0) } == .other)
        #expect(with(Array("12a".utf8)) { UDPWire.classify($0) } == .other)
        // 21 digits, and 20 digits above 2^64: not a size.
        #expect(with(Array("123456789012345678901".utf8)) { UDPWire.classify($0) } == .other)
        #expect(with(Array("99999999999999999999".utf8)) { UDPWire.classify($0) } == .other)
        #expect(with([]) { UDPWire.classify($0) } == .other)
        let initial = UDPWire.encode(UDPWire.Initial(clientNonce: 7, chunkSize: 1200), packet: 1)
        #expect(initial.count == UDPWire.minimumInitLength)
        #expect(initial[0] == 0xD5 && !(0x30...0x39).contains(initial[0]))
        #expect(with(initial) { UDPWire.classify($0) } == .native(.init(kind: .initial, session: 0, packet: 1)))
        // A wrong version is not native.
        var v2 = initial
        v2[1] = 2
        #expect(with(v2) { UDPWire.header($0) } == nil)
    }

    @Test func controlMessagesRoundTrip() {
        let file = FileHeader(uploadID: UploadID(bytes: Array(1...16)), size: 123_456_789, digest: .sha256, name: "dir/ä.bin")
        let start = UDPWire.Start(clientNonce: 99, cookie: Array(repeating: 3, count: 24), chunkSize: 8192, file: file, mac: Array(repeating: 9, count: 32))
        #expect(with(UDPWire.encode(start, packet: 5)) { UDPWire.decodeStart($0) } == start)
        let cookie = UDPWire.Cookie(clientNonce: 1, cookie: Array(repeating: 4, count: 24), chunkSize: 1200, authenticationRequired: true)
        #expect(with(UDPWire.encode(cookie, packet: 2)) { UDPWire.decodeCookie($0) } == cookie)
        let accept = UDPWire.Accept(clientNonce: 1, baseOffset: 4096, windowChunks: 13_981)
        #expect(with(UDPWire.encode(accept, session: 77, packet: 3)) { UDPWire.decodeAccept($0) } == accept)
        let status = UDPWire.Status(receiverTime: 1, echoPacket: 2, echoDelay: 3, cumulative: 4, windowLimit: 5, receivedBytes: 6,
                                    phase: .stored, nacks: [(10, 2), (20, 1)], message: "a.bin")
        #expect(with(UDPWire.encode(status, session: 77, packet: 4)) { UDPWire.decodeStatus($0) } == status)
        let finish = UDPWire.Finish(chunkCount: 100, algorithm: .xxh3_128, digest: Array(repeating: 1, count: 16))
        #expect(with(UDPWire.encode(finish, session: 77, packet: 6)) { UDPWire.decodeFinish($0) } == finish)
        // A FINISH whose digest length does not fit its algorithm is refused.
        var bad = UDPWire.encode(finish, session: 77, packet: 6)
        bad.removeLast()
        #expect(with(bad) { UDPWire.decodeFinish($0) } == nil)
        // Truncated STATUS and START are refused, never read past the end.
        let s = UDPWire.encode(status, session: 77, packet: 4)
        for n in UDPWire.headerLength..<s.count { #expect(with(Array(s.prefix(n))) { UDPWire.decodeStatus($0) } == nil) }
        let st = UDPWire.encode(start, packet: 5)
        for n in UDPWire.headerLength..<st.count { #expect(with(Array(st.prefix(n))) { UDPWire.decodeStart($0) } == nil) }
    }

    @Test func dataHeaderLayout() {
        var buffer = [UInt8](repeating: 0, count: UDPWire.dataHeaderLength)
        buffer.withUnsafeMutableBytes { UDPWire.writeDataHeader(session: 0x0102030405060708, packet: 9, chunk: 0xA0B0C0D0, into: $0.baseAddress!) }
        #expect(buffer == [0xD5, 1, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 9, 0xA0, 0xB0, 0xC0, 0xD0])
        #expect(with(buffer) { UDPWire.chunkIndex($0) } == 0xA0B0C0D0)
    }

    @Test func cookieBindsSourceNonceChunkSizeAndTime() {
        let jar = HandshakeCookie(secret: Array(repeating: 1, count: 32), lifetime: 30)
        let source: [UInt8] = [4, 0x1F, 0x90, 127, 0, 0, 1]
        let c = jar.issue(source: source, clientNonce: 42, chunkSize: 1200, now: 1000)
        #expect(c.count == UDPWire.cookieLength)
        #expect(jar.verify(c, source: source, clientNonce: 42, chunkSize: 1200, now: 1010))
        #expect(!jar.verify(c, source: [4, 0x1F, 0x91, 127, 0, 0, 1], clientNonce: 42, chunkSize: 1200, now: 1010))
        #expect(!jar.verify(c, source: source, clientNonce: 43, chunkSize: 1200, now: 1010))
        #expect(!jar.verify(c, source: source, clientNonce: 42, chunkSize: 8192, now: 1010))
        #expect(!jar.verify(c, source: source, clientNonce: 42, chunkSize: 1200, now: 1031))
        var tampered = c
        tampered[10] ^= 1
        #expect(!jar.verify(tampered, source: source, clientNonce: 42, chunkSize: 1200, now: 1010))
        // Another receiver's secret.
        #expect(!HandshakeCookie(secret: Array(repeating: 2, count: 32)).verify(c, source: source, clientNonce: 42, chunkSize: 1200, now: 1010))
        let mac = HandshakeCookie.authentication(token: "t", cookie: c, clientNonce: 42)
        #expect(HandshakeCookie.verifyAuthentication(mac, token: "t", cookie: c, clientNonce: 42))
        #expect(!HandshakeCookie.verifyAuthentication(mac, token: "u", cookie: c, clientNonce: 42))
    }
}

struct SeedUDPSessionTests {
    @Test func exactSizeCompletesWithoutEOF() {
        var s = SeedUDPSession(declaredSize: 2048, now: 0)
        #expect(s.started() == .append(0))
        #expect(s.datagram(count: 1024, isEndMarker: false, now: 1) == .append(1024))
        #expect(s.datagram(count: 1024, isEndMarker: false, now: 2) == .appendAndFinish(1024, .complete))
        // The EOF that follows (or anything else) changes nothing.
        #expect(s.datagram(count: 3, isEndMarker: true, now: 3) == .none)
        #expect(s.isFinished)
    }

    @Test func earlyEOFIsIncompleteWithTheMissingCount() {
        var s = SeedUDPSession(declaredSize: 3000, now: 0)
        _ = s.datagram(count: 1024, isEndMarker: false, now: 1)
        #expect(s.datagram(count: 3, isEndMarker: true, now: 2) == .appendAndFinish(0, .incomplete(missing: 1976, reason: .endMarker)))
    }

    @Test func idleTimeoutEndsTheSession() {
        var s = SeedUDPSession(declaredSize: 3000, now: 0)
        _ = s.datagram(count: 1024, isEndMarker: false, now: 100)
        #expect(s.tick(now: 150, timeout: 100) == .none)
        #expect(s.tick(now: 200, timeout: 100) == .appendAndFinish(0, .incomplete(missing: 1976, reason: .idleTimeout)))
    }

    @Test func moreThanDeclaredIsAnOverflow() {
        var s = SeedUDPSession(declaredSize: 1500, now: 0)
        _ = s.datagram(count: 1024, isEndMarker: false, now: 1)
        #expect(s.datagram(count: 1024, isEndMarker: false, now: 2) == .appendAndFinish(0, .overflow(extra: 548)))
    }

    @Test func aCoalescedBufferEndingInTheMarkerCompletesWhenTheRestFillsTheSize() {
        var s = SeedUDPSession(declaredSize: 4096, now: 0)
        #expect(s.coalescedDatagram(count: 2048, endsWithMarker: false, now: 1) == .append(2048))
        // 2048 data bytes then the 3-byte EOF segment: complete, the marker is not data.
        #expect(s.coalescedDatagram(count: 2051, endsWithMarker: true, now: 2) == .appendAndFinish(2048, .complete))
    }

    @Test func aCoalescedBufferEndingInEOFBytesIsDataWhileTheSizeIsNotReached() {
        var s = SeedUDPSession(declaredSize: 4096, now: 0)
        // The file's own bytes may end in "EOF": short of the size, they are data.
        #expect(s.coalescedDatagram(count: 2051, endsWithMarker: true, now: 1) == .append(2051))
        // Past the size by more than the marker: an overflow, as for any datagram.
        #expect(s.coalescedDatagram(count: 2051, endsWithMarker: true, now: 2) == .appendAndFinish(0, .overflow(extra: 6)))
    }

    @Test func emptyFileCompletesAtOnce() {
        var s = SeedUDPSession(declaredSize: 0, now: 0)
        #expect(s.started() == .appendAndFinish(0, .complete))
    }

    @Test func shutdownEndsIncomplete() {
        var s = SeedUDPSession(declaredSize: 10, now: 0)
        #expect(s.shutdown() == .appendAndFinish(0, .incomplete(missing: 10, reason: .shutdown)))
        #expect(s.shutdown() == .none)
    }
}

struct ReliableUDPReceiverTests {
    typealias R = ReliableUDPReceiver

    func machine(chunks: UInt32 = 1000, chunkSize: Int = 1000, window: UInt32 = 256, flush: Int = 16_000) -> R {
        var c = R.Configuration(chunkSize: chunkSize, totalBytes: UInt64(chunks) * UInt64(chunkSize), windowChunks: window)
        c.flushBytes = flush
        c.budgetAllowance = 1 << 30
        return R(c, now: 0)
    }

    @Test func inOrderChunksAreWrittenInLargeRuns() {
        var m = machine()
        for i in 0..<15 { #expect(m.data(chunk: UInt32(i), length: 1000, packet: UInt64(i + 1), now: 10) == .store(slot: i)) }
        #expect(m.poll(now: 20).write == nil)  // 15,000 bytes: below the 16,000 threshold
        _ = m.data(chunk: 15, length: 1000, packet: 16, now: 30)
        let a = m.poll(now: 40)
        #expect(a.write == R.Write(firstChunk: 0, endChunk: 16, fileOffset: 0, byteCount: 16_000))
        // One write at a time.
        for i in 16..<40 { _ = m.data(chunk: UInt32(i), length: 1000, packet: UInt64(i + 1), now: 50) }
        #expect(m.poll(now: 60).write == nil)
        #expect(m.writeCompleted(now: 70).write == R.Write(firstChunk: 16, endChunk: 40, fileOffset: 16_000, byteCount: 24_000))
    }

    @Test func duplicatesLengthsAndTheWindowAreChecked() {
        var m = machine(window: 64)
        #expect(m.data(chunk: 0, length: 1000, packet: 1, now: 1) == .store(slot: 0))
        #expect(m.data(chunk: 0, length: 1000, packet: 2, now: 2) == .duplicate)
        #expect(m.data(chunk: 1, length: 999, packet: 3, now: 3) == .badLength(expected: 1000))
        #expect(m.data(chunk: 64, length: 1000, packet: 4, now: 4) == .outOfRange)  // beyond the window
        #expect(m.data(chunk: 1000, length: 1000, packet: 5, now: 5) == .outOfRange)  // beyond the file
        #expect(m.data(chunk: 63, length: 1000, packet: 6, now: 6) == .store(slot: 63))
        #expect(m.duplicateCount == 1)
    }

    @Test func aClearGapIsReportedAtOnceAndOnlyOncePerRoundTrip() {
        var m = machine()
        _ = m.data(chunk: 0, length: 1000, packet: 1, now: 1000)
        // Chunk 1 lost; 2, 3, 4 arrive: three beyond the hole makes it clear.
        for c: UInt32 in [2, 3, 4] { _ = m.data(chunk: c, length: 1000, packet: UInt64(c), now: 1000) }
        #expect(m.poll(now: 1300).sendStatus)
        let s = m.makeStatus(now: 1300)
        #expect(s.cumulative == 1)
        #expect(s.nacks.count == 1 && s.nacks[0] == (1, 1))
        // Not again within the round-trip estimate (10 ms before any sample).
        _ = m.data(chunk: 5, length: 1000, packet: 6, now: 2000)
        #expect(m.makeStatus(now: 3000).nacks.isEmpty)
        // After it, yes.
        #expect(m.makeStatus(now: 30_000).nacks.first! == (1, 1))
        // The retransmission fills the hole; the round-trip sample shrinks the estimate.
        #expect(m.data(chunk: 1, length: 1000, packet: 7, now: 31_000) == .store(slot: 1))
        #expect(m.cumulative == 6)
        #expect(m.roundTrip < 10_000)
    }

    /// A hole filled last, with the window full behind it and the chunks before it not yet
    /// written: the cumulative point stops at the window limit. It used to run on through the
    /// ring (the slot of chunk `released + window` is the slot of `released`, still full), to the
    /// end of the file, and the driver was handed a write run longer than its ring (the receiver
    /// crashed under 1% loss, bench U2).
    @Test func fillingTheLastHoleOfAFullWindowStopsAtTheWindowLimit() {
        var m = machine(chunks: 100, window: 8, flush: 1 << 20)  // no write before the end
        for c: UInt32 in [0, 1, 3, 4, 5, 6, 7] { #expect(m.data(chunk: c, length: 1000, packet: UInt64(c + 1), now: 100) == .store(slot: Int(c))) }
        #expect(m.cumulative == 2)
        #expect(m.data(chunk: 8, length: 1000, packet: 9, now: 110) == .outOfRange)
        #expect(m.data(chunk: 2, length: 1000, packet: 10, now: 120) == .store(slot: 2))
        #expect(m.cumulative == 8)
        let a = m.poll(now: 130)
        #expect(a.write == R.Write(firstChunk: 0, endChunk: 8, fileOffset: 0, byteCount: 8000))
        // The window moves on only once that run is on disk.
        #expect(m.data(chunk: 8, length: 1000, packet: 11, now: 140) == .outOfRange)
        _ = m.writeCompleted(now: 150)
        #expect(m.windowLimit == 16)
        #expect(m.data(chunk: 8, length: 1000, packet: 12, now: 160) == .store(slot: 0))
        #expect(m.cumulative == 9)
    }

    /// The machine driven as the UDP driver drives it, with a simulated ring that records which
    /// chunk each slot holds, under seeded random loss, reordering, duplication and slow writes:
    /// no payload may land in a slot whose chunk is not yet on disk, every write run must be
    /// exactly the chunks its slots hold, in file order and at most a window long, and every
    /// chunk must be written exactly once. 200 seeds, a bounded number of steps each.
    @Test(arguments: 0..<200)
    func randomDeliveryNeverOverwritesUnwrittenSlotsAndWritesEachChunkOnce(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let chunks = UInt32(20 + rng.next() % 200), window = UInt32(2 + rng.next() % 24)
        var m = machine(chunks: chunks, window: window, flush: Int(1 + rng.next() % 8) * 1000)
        var ring = [UInt32?](repeating: nil, count: Int(window))
        var written = UInt32(0)
        var inFlight: R.Write?
        var packet: UInt64 = 0
        var now: UInt64 = 1000
        func apply(_ a: R.Actions) {
            guard let w = a.write else { return }
            #expect(inFlight == nil, "a second write while one is in flight")
            #expect(w.firstChunk == written && w.endChunk > w.firstChunk && w.endChunk - w.firstChunk <= window, "run \(w), window \(window), written \(written)")
            for c in w.firstChunk..<min(w.endChunk, written + window) {
                #expect(ring[Int(c % window)] == c, "slot of chunk \(c) holds \(String(describing: ring[Int(c % window)]))")
            }
            inFlight = w
        }
        var steps = 0
        while written < chunks && steps < 20_000 {
            steps += 1
            now += 50
            let r = rng.next() % 10
            if r < 2, let w = inFlight {
                // The write completes: its slots are free again.
                for c in w.firstChunk..<w.endChunk { ring[Int(c % window)] = nil }
                written = w.endChunk
                inFlight = nil
                apply(m.writeCompleted(now: now))
                continue
            }
            // The sender sends a chunk in the window (often the lowest missing, as after a NACK).
            let low = m.cumulative, limit = m.windowLimit
            guard limit > low else { apply(m.poll(now: now)); continue }
            let chunk = r < 5 ? low : low + UInt32(rng.next() % UInt64(limit - low))
            if rng.next() % 5 == 0 { continue }  // lost
            packet += 1
            switch m.data(chunk: chunk, length: 1000, packet: packet, now: now) {
            case .store(let slot):
                #expect(slot == Int(chunk % window))
                #expect(ring[slot] == nil, "chunk \(chunk) into slot \(slot) that still holds unwritten chunk \(ring[slot]!)")
                ring[slot] = chunk
            case .duplicate, .outOfRange: break
            case .badLength, .closed: Issue.record("unexpected verdict for chunk \(chunk)")
            }
            #expect(m.cumulative <= m.windowLimit)
            if rng.next() % 3 == 0 { apply(m.poll(now: now)) }
        }
        #expect(written == chunks, "seed \(seed): \(written) of \(chunks) written in \(steps) steps")
    }

    @Test func reorderingWithinTheThresholdIsNotReported() {
        var m = machine()
        for c: UInt32 in [0, 2, 1, 3] { _ = m.data(chunk: c, length: 1000, packet: UInt64(c + 1), now: 100) }
        #expect(m.cumulative == 4)
        #expect(m.makeStatus(now: 200).nacks.isEmpty)
    }

    @Test func finishReportsTheMissingTailThenVerifiesOnceAllIsOnDisk() {
        var m = machine(chunks: 10, flush: 1 << 20)
        for c: UInt32 in 0..<7 { _ = m.data(chunk: c, length: 1000, packet: UInt64(c + 1), now: 100) }
        let f = UDPWire.Finish(chunkCount: 10, algorithm: .xxh3_128, digest: Array(repeating: 0, count: 16))
        let a = m.finish(f, now: 200)
        #expect(a.sendStatus)
        #expect(!a.verify)
        let s = m.makeStatus(now: 200)
        #expect(s.nacks.count == 1 && s.nacks[0] == (7, 3))
        for c: UInt32 in 7..<10 { _ = m.data(chunk: c, length: 1000, packet: UInt64(c + 10), now: 300) }
        let w = m.poll(now: 400)
        #expect(w.write == R.Write(firstChunk: 0, endChunk: 10, fileOffset: 0, byteCount: 10_000))
        #expect(!w.verify)
        let v = m.writeCompleted(now: 500)
        #expect(v.verify)
        #expect(m.phase == .verifying)
        #expect(m.verified(true, detail: "").sendStatus == false)
        #expect(m.committed(.success("a.bin")).sendStatus)
        #expect(m.phase == .stored)
        #expect(m.makeStatus(now: 600).message == "a.bin")
        // A duplicate FINISH repeats the final status.
        #expect(m.finish(f, now: 700).sendStatus)
    }

    @Test func theLastChunkMayBeShort() {
        var c = R.Configuration(chunkSize: 1000, totalBytes: 2500, windowChunks: 64)
        c.flushBytes = 1 << 20
        var m = R(c, now: 0)
        #expect(m.chunkCount == 3)
        #expect(m.data(chunk: 2, length: 1000, packet: 1, now: 1) == .badLength(expected: 500))
        #expect(m.data(chunk: 2, length: 500, packet: 2, now: 1) == .store(slot: 2))
        _ = m.data(chunk: 0, length: 1000, packet: 3, now: 1)
        _ = m.data(chunk: 1, length: 1000, packet: 4, now: 1)
        #expect(m.poll(now: 2).write == R.Write(firstChunk: 0, endChunk: 3, fileOffset: 0, byteCount: 2500))
    }

    @Test func aWrongChunkCountOrDigestFails() {
        var m = machine(chunks: 10)
        _ = m.finish(UDPWire.Finish(chunkCount: 11, algorithm: .xxh3_128, digest: []), now: 1)
        #expect(m.phase == .failed)
        var n = machine(chunks: 1, flush: 1)
        _ = n.data(chunk: 0, length: 1000, packet: 1, now: 1)
        _ = n.finish(UDPWire.Finish(chunkCount: 1, algorithm: .xxh3_128, digest: []), now: 2)
        #expect(n.writeCompleted(now: 3).verify)
        #expect(n.verified(false, detail: "digest mismatch").sendStatus)
        #expect(n.phase == .failed && n.finalMessage == "digest mismatch")
    }

    @Test func statusesStayWithinTheByteBudget() {
        var c = R.Configuration(chunkSize: 1000, totalBytes: 1_000_000, windowChunks: 256)
        c.budgetAllowance = 0
        var m = R(c, now: 0)
        // Nothing received: no status may be sent to the source.
        #expect(!m.poll(now: 1_000_000).sendStatus)
        for i: UInt32 in 0..<32 { _ = m.data(chunk: i, length: 1000, packet: UInt64(i + 1), now: 10) }
        #expect(m.poll(now: 5000).sendStatus)  // 32,000 bytes in: 2,000 bytes of budget
        m.sent(bytes: 2000)
        _ = m.data(chunk: 32, length: 1000, packet: 40, now: 6000)
        #expect(!m.poll(now: 9000).sendStatus)
    }
}

struct UDPSendControlTests {
    func status(cumulative: UInt32, window: UInt32, nacks: [(UInt32, UInt32)] = [], received: UInt64 = 0, time: UInt64 = 0) -> UDPWire.Status {
        UDPWire.Status(receiverTime: time, echoPacket: 0, echoDelay: 0, cumulative: cumulative, windowLimit: window, receivedBytes: received, phase: .receiving, nacks: nacks, message: "")
    }

    @Test func retransmissionsGoAheadOfNewDataAndTheWindowHolds() {
        var s = UDPSendScheduler(chunkCount: 100, windowChunks: 10)
        var sent: [UInt32] = []
        while let (c, _) = s.next() { sent.append(c) }
        #expect(sent == Array(0..<10))
        s.status(status(cumulative: 3, window: 15, nacks: [(3, 2), (7, 1)]))
        var next: [(UInt32, Bool)] = []
        while let n = s.next() { next.append(n) }
        #expect(next.map(\.0) == [3, 4, 7, 10, 11, 12, 13, 14])
        #expect(next.map(\.1) == [true, true, true, false, false, false, false, false])
        #expect(s.retransmitted == 3)
        // Ranges the receiver has since got are skipped; ranges beyond what was sent are ignored.
        s.status(status(cumulative: 12, window: 20, nacks: [(5, 3), (90, 5)]))
        #expect(s.next()! == (15, false))
    }

    @Test func startupGrowsThenSettles() {
        var r = RateController()
        var receiverTime: UInt64 = 0, received: UInt64 = 0, now: UInt64 = 0
        let bottleneck = 400e6
        r.roundTripSample(200)
        for _ in 0..<400 {
            now += 5_000
            receiverTime += 5_000
            received += UInt64(min(r.pacingRate, bottleneck) * 0.005)
            r.delivered(receivedBytes: received, receiverTime: receiverTime, now: now)
        }
        #expect(r.mode == .probe)
        #expect(r.bandwidth > bottleneck * 0.9 && r.bandwidth < bottleneck * 1.1)
    }

    @Test func randomLossDoesNotCollapseTheRate() {
        // 5% of what is sent never arrives: the estimate still finds the bottleneck.
        var r = RateController()
        var receiverTime: UInt64 = 0, received: UInt64 = 0, now: UInt64 = 0
        let bottleneck = 200e6
        for _ in 0..<600 {
            now += 5_000
            receiverTime += 5_000
            received += UInt64(min(r.pacingRate * 0.95, bottleneck) * 0.005)
            r.delivered(receivedBytes: received, receiverTime: receiverTime, now: now)
        }
        #expect(r.bandwidth > bottleneck * 0.85)
    }

    @Test func maxRateCaps() {
        var c = RateController.Configuration()
        c.maxRate = 10e6
        var r = RateController(c)
        var t: UInt64 = 0, b: UInt64 = 0
        for _ in 0..<100 {
            t += 5_000
            b += UInt64(r.pacingRate * 0.005)
            r.delivered(receivedBytes: b, receiverTime: t, now: t)
        }
        #expect(r.pacingRate <= 10e6)
    }
}


/// A small seeded generator for repeatable random tests (SplitMix64).
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
