/// When a native reliable-UDP session ends by time: idle while its partial opens, idle while
/// receiving (no datagram from the sender), and the linger of a finished session, which
/// answers a repeated FINISH and then goes.
///
/// A value with time passed in (microseconds of a monotonic clock): the session driver asks it
/// on every timer tick.
public struct UDPSessionClock {
    /// What the driver must do on this tick.
    public enum Action: Hashable, Sendable {
        /// Nothing is due: let the receive machine poll (statuses, flushes).
        case poll
        /// Nothing to do at all (still opening, or lingering).
        case none
        /// The sender went quiet: close the session, keeping its partial for resume.
        case closeIdle
        /// The finished session has lingered long enough: forget it.
        case endLinger
    }

    private enum Phase: Hashable {
        case opening(since: UInt64)
        case receiving
        case finished(at: UInt64)
    }

    private var phase: Phase
    private let idleTimeout: UInt64
    private let linger: UInt64

    /// `idleTimeout` and `linger` in seconds; absurdly long ones saturate.
    public init(idleTimeout: Double, linger: Double, now: UInt64) {
        self.idleTimeout = TimeLimit.units(idleTimeout, perSecond: 1e6) ?? .max
        self.linger = TimeLimit.units(linger, perSecond: 1e6) ?? .max
        phase = .opening(since: now)
    }

    /// The partial is open and the receive machine runs.
    public mutating func opened() {
        if case .opening = phase { phase = .receiving }
    }

    /// The upload finished (stored, refused or failed) and its final status was sent.
    public mutating func finished(now: UInt64) {
        if case .finished = phase { return }
        phase = .finished(at: now)
    }

    /// Whether `finished(now:)` was called.
    public var hasFinished: Bool {
        if case .finished = phase { return true }
        return false
    }

    /// A timer tick; `lastActivity` is when the receive machine last heard from the sender.
    public func tick(now: UInt64, lastActivity: UInt64) -> Action {
        switch phase {
        case .opening(let since):
            return now > since && now - since > idleTimeout ? .closeIdle : .none
        case .finished(let at):
            return now > at && now - at > linger ? .endLinger : .none
        case .receiving:
            return now > lastActivity && now - lastActivity > idleTimeout ? .closeIdle : .poll
        }
    }
}

/// Converts a time limit given in seconds (a user's number) to whole clock units, saturating
/// where the limit does not fit the clock, so no limit can trap.
public enum TimeLimit {
    /// nil when `seconds` is not positive (no limit); `UInt64.max` when it is too long to count.
    public static func units(_ seconds: Double, perSecond: Double) -> UInt64? {
        guard seconds > 0 else { return nil }
        let units = seconds * perSecond
        return units < Double(UInt64.max) ? UInt64(units) : .max
    }
}
