/// The state of one seed-protocol UDP upload (one source address and port): the size datagram
/// started it; data datagrams are appended in arrival order, exactly as the seed server does.
/// It ends on `EOF`, when the declared size has arrived, or after an idle timeout, and is
/// complete only if exactly the declared size arrived. Nothing is ever sent back.
///
/// A pure value owned by the UDP driver; it never touches sockets or files. Each event returns
/// what the driver must do (append bytes to the partial, then maybe finish).
public struct SeedUDPSession: Sendable {
    /// How a seed session ended.
    public enum Outcome: Equatable, Sendable {
        /// Exactly the declared size arrived: store the file.
        case complete
        /// Fewer bytes arrived (`missing` of the declared size); `reason` says what ended it.
        case incomplete(missing: UInt64, reason: EndReason)
        /// More bytes arrived than declared (`extra` beyond it).
        case overflow(extra: UInt64)
    }

    public enum EndReason: String, Equatable, Sendable {
        case endMarker = "EOF datagram"
        case idleTimeout = "idle timeout"
        case shutdown = "server stopping"
    }

    /// What the driver does with one datagram.
    public enum Action: Equatable, Sendable {
        /// Append the datagram's `count` bytes.
        case append(Int)
        /// Append `count` bytes (possibly 0), then end the session with `outcome`.
        case appendAndFinish(Int, Outcome)
        /// Ignore the datagram (the session is over).
        case none
    }

    private enum State: Equatable, Sendable {
        case receiving(received: UInt64, lastActivity: UInt64)
        case finished(Outcome)
    }

    public let declaredSize: UInt64
    private var state: State

    /// A session that starts with a size datagram at `now` (any clock, the same unit as the timeout).
    public init(declaredSize: UInt64, now: UInt64) {
        self.declaredSize = declaredSize
        state = .receiving(received: 0, lastActivity: now)
    }

    /// For a declared size of 0 the session is complete at once.
    public mutating func started() -> Action {
        if declaredSize == 0 { return finish(.complete, append: 0) }
        return .append(0)
    }

    public var received: UInt64 {
        switch state {
        case .receiving(let r, _): return r
        case .finished(let o):
            switch o {
            case .complete: return declaredSize
            case .incomplete(let missing, _): return declaredSize - missing
            case .overflow(let extra): return declaredSize + extra
            }
        }
    }

    public var isFinished: Bool { if case .finished = state { return true } else { return false } }

    /// A datagram of `count` bytes from the session's source; `isEndMarker` for `EOF`.
    public mutating func datagram(count: Int, isEndMarker: Bool, now: UInt64) -> Action {
        guard case .receiving(let received, _) = state else { return .none }
        if isEndMarker {
            return finish(received == declaredSize ? .complete : .incomplete(missing: declaredSize - received, reason: .endMarker), append: 0)
        }
        let total = received + UInt64(count)
        if total > declaredSize {
            return finish(.overflow(extra: total - declaredSize), append: 0)
        }
        if total == declaredSize { return finish(.complete, append: count) }
        state = .receiving(received: total, lastActivity: now)
        return .append(count)
    }

    /// A receive buffer that may hold several datagrams the kernel coalesced (UDP receive
    /// offload: equal-size segments, the last one possibly shorter). The bytes count in arrival
    /// order as always; when the buffer ends in `EOF` and its other bytes complete the declared
    /// size exactly, that tail is the end marker, not data (data can never exceed the size).
    public mutating func coalescedDatagram(count: Int, endsWithMarker: Bool, now: UInt64) -> Action {
        guard case .receiving(let received, _) = state else { return .none }
        if endsWithMarker, count > 3, received + UInt64(count - 3) == declaredSize {
            return finish(.complete, append: count - 3)
        }
        return datagram(count: count, isEndMarker: false, now: now)
    }

    /// The driver's periodic check: ends the session if nothing arrived for `timeout`.
    public mutating func tick(now: UInt64, timeout: UInt64) -> Action {
        guard case .receiving(let received, let last) = state, now >= last, now - last >= timeout else { return .none }
        return finish(.incomplete(missing: declaredSize - received, reason: .idleTimeout), append: 0)
    }

    /// The server is stopping.
    public mutating func shutdown() -> Action {
        guard case .receiving(let received, _) = state else { return .none }
        return finish(.incomplete(missing: declaredSize - received, reason: .shutdown), append: 0)
    }

    private mutating func finish(_ outcome: Outcome, append: Int) -> Action {
        state = .finished(outcome)
        return .appendAndFinish(append, outcome)
    }
}
