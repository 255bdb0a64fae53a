/// The receiving side of one native reliable-UDP session (docs/PROTOCOL.md §4): which chunks
/// have arrived, where each goes in the session's ring of chunk slots, when a contiguous run is
/// written to disk, what the next STATUS says (cumulative point, window, NACK ranges), and how
/// the session ends (FINISH, digest verification, commit).
///
/// A pure value owned by the UDP driver. The driver owns the ring memory (`windowChunks` slots of
/// `chunkSize` bytes), copies each accepted payload into the slot the machine names, issues the
/// writes the machine asks for, and reports their completion. Times are microseconds of any
/// monotonic clock.
public struct ReliableUDPReceiver: Sendable {
    public struct Configuration: Sendable {
        public var chunkSize: Int
        /// Bytes this session must receive (the file size minus what an earlier try left).
        public var totalBytes: UInt64
        /// Ring slots: chunks the sender may have beyond the last chunk written to disk.
        public var windowChunks: UInt32
        /// Write a contiguous run once it holds this many bytes (or at the end).
        public var flushBytes = 256 * 1024
        /// A missing chunk is reported once this many later chunks have arrived.
        public var reorderThreshold: UInt32 = 3
        /// STATUS at least this often while data flows.
        public var statusInterval: UInt64 = 2_000
        /// STATUS while a gap or the tail is open and nothing arrives.
        public var idleStatusInterval: UInt64 = 20_000
        /// Before any round-trip sample.
        public var initialRoundTrip: UInt64 = 10_000
        /// Bytes sent to the source stay below receivedBytes / budgetDivisor + budgetAllowance.
        public var budgetDivisor: UInt64 = 16
        public var budgetAllowance: UInt64 = 16 * 1024
        public init(chunkSize: Int, totalBytes: UInt64, windowChunks: UInt32) {
            self.chunkSize = chunkSize
            self.totalBytes = totalBytes
            self.windowChunks = windowChunks
        }
    }

    /// What to do with one DATA datagram.
    public enum DataVerdict: Equatable, Sendable {
        /// Copy the payload into ring slot `slot`.
        case store(slot: Int)
        /// Already held (or already written): drop it.
        case duplicate
        /// Beyond the window or the end of the file: drop it.
        case outOfRange
        /// The payload length is not what this chunk must have.
        case badLength(expected: Int)
        /// The session no longer takes data.
        case closed
    }

    /// A contiguous run of chunks to write: slots `firstSlot ..< firstSlot + count` of the ring,
    /// wrapping at the end of the ring, starting at `fileOffset` (relative to the session base).
    public struct Write: Equatable, Sendable {
        public var firstChunk: UInt32
        public var endChunk: UInt32
        public var fileOffset: UInt64
        public var byteCount: Int
    }

    /// What the driver does after a batch of datagrams or a timer tick.
    public struct Actions: Equatable, Sendable {
        public var write: Write?
        public var sendStatus = false
        /// All bytes are on disk and FINISH has arrived: compare the digest.
        public var verify = false
        public init() {}
    }

    private enum State: Equatable, Sendable {
        case receiving
        case verifying
        case committing
        case finished(stored: Bool, message: String)
    }

    public let configuration: Configuration
    public let chunkCount: UInt32
    private var state: State = .receiving
    private var bitmap: [UInt64]
    private var nackTime: [UInt64]
    /// All chunks below are held.
    public private(set) var cumulative: UInt32 = 0
    /// One past the highest chunk seen.
    public private(set) var highest: UInt32 = 0
    /// Chunks below are handed to a write.
    public private(set) var flushed: UInt32 = 0
    /// Chunks below are on disk (their slots are free).
    public private(set) var released: UInt32 = 0
    private var writeInFlight = false
    public private(set) var finish: UDPWire.Finish?
    public private(set) var receivedBytes: UInt64 = 0
    public private(set) var duplicateCount: UInt64 = 0
    private var largestPacket: UInt64 = 0
    private var largestPacketTime: UInt64 = 0
    private var lastDataTime: UInt64
    private var lastStatusTime: UInt64 = 0
    private var changedSinceStatus = false
    private var urgent = false
    private var pendingGap: UInt32?
    private var reportedWindow: UInt32 = 0
    public private(set) var roundTrip: UInt64
    public private(set) var bytesSentToSource: UInt64 = 0

    public init(_ configuration: Configuration, now: UInt64) {
        precondition(configuration.chunkSize > 0 && configuration.windowChunks > 0)
        self.configuration = configuration
        let cs = UInt64(configuration.chunkSize)
        chunkCount = UInt32((configuration.totalBytes + cs - 1) / cs)
        let words = (Int(configuration.windowChunks) + 63) / 64
        bitmap = [UInt64](repeating: 0, count: words)
        nackTime = [UInt64](repeating: 0, count: Int(configuration.windowChunks))
        roundTrip = configuration.initialRoundTrip
        lastDataTime = now
    }

    public var phase: UDPWire.SessionPhase {
        switch state {
        case .receiving: return .receiving
        case .verifying, .committing: return .verifying
        case .finished(let stored, _): return stored ? .stored : .failed
        }
    }

    public var isFinished: Bool { if case .finished = state { return true } else { return false } }
    /// The chunks the sender may send: below this index.
    public var windowLimit: UInt32 { min(chunkCount, released &+ configuration.windowChunks) }
    public var lastActivity: UInt64 { lastDataTime }

    /// Payload bytes of chunk `i`.
    public func length(ofChunk i: UInt32) -> Int {
        let cs = UInt64(configuration.chunkSize)
        let start = UInt64(i) * cs
        return Int(min(cs, configuration.totalBytes - start))
    }

    @inline(__always) private func slot(_ i: UInt32) -> Int { Int(i % configuration.windowChunks) }
    @inline(__always) private func isHeld(_ i: UInt32) -> Bool {
        let s = slot(i)
        return bitmap[s >> 6] & (1 << UInt64(s & 63)) != 0
    }

    // MARK: - Events

    /// A DATA datagram: chunk `chunk`, `length` payload bytes, packet number `packet`.
    public mutating func data(chunk: UInt32, length: Int, packet: UInt64, now: UInt64) -> DataVerdict {
        lastDataTime = now
        if packet > largestPacket || largestPacketTime == 0 {
            largestPacket = packet
            largestPacketTime = now
        }
        guard state == .receiving else { return .closed }
        guard chunk < chunkCount, chunk < windowLimit else { return .outOfRange }
        let expected = self.length(ofChunk: chunk)
        guard length == expected else { return .badLength(expected: expected) }
        receivedBytes &+= UInt64(length)
        changedSinceStatus = true
        if chunk < cumulative || isHeld(chunk) {
            duplicateCount += 1
            return .duplicate
        }
        let s = slot(chunk)
        bitmap[s >> 6] |= 1 << UInt64(s & 63)
        if nackTime[s] != 0 {
            // A chunk we asked for: the time since the request is a round-trip sample.
            let sample = now > nackTime[s] ? now - nackTime[s] : 0
            roundTrip = (roundTrip * 7 + max(sample, 100)) / 8
            nackTime[s] = 0
        }
        if chunk >= highest {
            // A clear gap: `reorderThreshold` chunks beyond a hole have arrived and it is still open.
            if chunk > highest, pendingGap == nil { pendingGap = highest }
            if let g = pendingGap, chunk >= g &+ configuration.reorderThreshold {
                if g >= cumulative, !isHeld(g) { urgent = true }
                pendingGap = nil
            }
            highest = chunk + 1
        }
        if chunk == cumulative { advanceCumulative() }
        return .store(slot: s)
    }

    /// Moves the cumulative point over the chunks held from it on, never past the window: the
    /// slot of chunk `windowLimit` is the slot of `released`, whose bit may belong to that older,
    /// unwritten chunk (the bits say which slots are full, not which chunk fills them).
    private mutating func advanceCumulative() {
        let limit = windowLimit
        while cumulative < limit, isHeld(cumulative) { cumulative += 1 }
    }

    /// FINISH from the sender. A chunk count that does not match the announced size fails the session.
    public mutating func finish(_ f: UDPWire.Finish, now: UInt64) -> Actions {
        var a = Actions()
        switch state {
        case .receiving:
            if f.chunkCount != chunkCount {
                state = .finished(stored: false, message: "FINISH announces \(f.chunkCount) chunks, the size needs \(chunkCount)")
                a.sendStatus = true
                return a
            }
            if finish == nil {
                finish = f
                urgent = true  // report the missing tail at once
            }
            return poll(now: now)
        case .verifying, .committing:
            return a
        case .finished:
            // A duplicate FINISH: repeat the final status (within the byte budget).
            a.sendStatus = budgetAllows(64)
            return a
        }
    }

    /// A write the machine asked for completed.
    public mutating func writeCompleted(now: UInt64) -> Actions {
        writeInFlight = false
        released = flushed
        // Clear the bits of the released slots so they can hold later chunks.
        return poll(now: now)
    }

    /// A write failed (for example disk full): the session fails with `reason`.
    public mutating func writeFailed(_ reason: String) -> Actions {
        writeInFlight = false
        state = .finished(stored: false, message: reason)
        var a = Actions()
        a.sendStatus = true
        return a
    }

    /// The driver compared the digest it computed over the written bytes with FINISH's.
    public mutating func verified(_ matches: Bool, detail: String) -> Actions {
        var a = Actions()
        guard state == .verifying else { return a }
        if matches {
            state = .committing
        } else {
            state = .finished(stored: false, message: detail)
            a.sendStatus = true
        }
        return a
    }

    /// The file is in place under `name`, or could not be put there.
    public mutating func committed(_ result: Result<String, ProtocolError>) -> Actions {
        var a = Actions()
        switch result {
        case .success(let name): state = .finished(stored: true, message: name)
        case .failure(let e): state = .finished(stored: false, message: e.description)
        }
        a.sendStatus = true
        return a
    }

    /// The final message (the stored name, or why it failed), once finished.
    public var finalMessage: String? {
        if case .finished(_, let m) = state { return m }
        return nil
    }

    // MARK: - After each batch and on the timer

    /// What to do now: a write when a run is long enough (or the file is complete), a STATUS
    /// when due, verification when everything is on disk.
    public mutating func poll(now: UInt64) -> Actions {
        var a = Actions()
        guard state == .receiving else { return a }
        if !writeInFlight, cumulative > flushed {
            let bytes = UInt64(cumulative - flushed) * UInt64(configuration.chunkSize)
            let ringFull = cumulative - released >= configuration.windowChunks / 2
            let quiet = now >= lastDataTime && now - lastDataTime >= configuration.idleStatusInterval
            if bytes >= UInt64(configuration.flushBytes) || cumulative == chunkCount || ringFull || quiet {
                let offset = UInt64(flushed) * UInt64(configuration.chunkSize)
                let end = cumulative
                var count = 0
                // Clear the slots' bits now: the bytes stay in the ring until the write completes,
                // and the window limit (released + window) keeps new chunks out of those slots.
                var i = flushed
                while i < end {
                    let s = slot(i)
                    bitmap[s >> 6] &= ~(1 << UInt64(s & 63))
                    count += length(ofChunk: i)
                    i += 1
                }
                a.write = Write(firstChunk: flushed, endChunk: end, fileOffset: offset, byteCount: count)
                flushed = end
                writeInFlight = true
            }
        }
        if finish != nil, released == chunkCount, !writeInFlight {
            state = .verifying
            a.verify = true
            return a
        }
        let sinceStatus = now >= lastStatusTime ? now - lastStatusTime : 0
        let open = highest > cumulative || (finish != nil && cumulative < chunkCount)
        // A window update: the sender may be waiting for it (it has sent all it was allowed).
        let windowOpened = windowLimit != reportedWindow
        if (urgent && sinceStatus >= 200) || (windowOpened && sinceStatus >= 200) || (changedSinceStatus && sinceStatus >= configuration.statusInterval)
            || (open && sinceStatus >= max(configuration.idleStatusInterval, roundTrip * 2)) {
            a.sendStatus = budgetAllows(64)
        }
        return a
    }

    private func budgetAllows(_ bytes: UInt64) -> Bool {
        bytesSentToSource + bytes <= receivedBytes / configuration.budgetDivisor + configuration.budgetAllowance
    }

    /// Builds the STATUS to send now and records it (NACK times, byte budget). `ownBytes` is the
    /// encoded length the driver will send, counted against the budget after encoding.
    public mutating func makeStatus(now: UInt64) -> UDPWire.Status {
        var nacks: [(UInt32, UInt32)] = []
        if state == .receiving {
            let limit: UInt32 = finish != nil ? chunkCount : (highest > configuration.reorderThreshold ? highest - configuration.reorderThreshold : 0)
            let suppress = max(roundTrip * 3 / 2, 1_000)
            var i = cumulative
            var scanned = 0
            while i < limit, nacks.count < UDPWire.maxNackRanges, scanned < Int(configuration.windowChunks) {
                // Skip whole words of held chunks quickly.
                let s = slot(i)
                if s & 63 == 0, bitmap[s >> 6] == ~0, i + 64 <= limit {
                    i += 64
                    scanned += 64
                    continue
                }
                if !isHeld(i), now >= nackTime[s] &+ suppress || nackTime[s] == 0 {
                    nackTime[s] = now
                    if let last = nacks.last, last.0 + last.1 == i {
                        nacks[nacks.count - 1].1 += 1
                    } else {
                        nacks.append((i, 1))
                    }
                }
                i += 1
                scanned += 1
            }
        }
        lastStatusTime = now
        reportedWindow = windowLimit
        changedSinceStatus = false
        urgent = false
        let delay = now >= largestPacketTime ? now - largestPacketTime : 0
        return UDPWire.Status(receiverTime: now, echoPacket: largestPacket, echoDelay: UInt32(min(delay, UInt64(UInt32.max))),
                              cumulative: cumulative, windowLimit: windowLimit, receivedBytes: receivedBytes,
                              phase: phase, nacks: nacks, message: finalMessage ?? "")
    }

    /// Counts bytes sent to the source (STATUS, ACCEPT) against the amplification budget.
    public mutating func sent(bytes: Int) { bytesSentToSource += UInt64(bytes) }
}
