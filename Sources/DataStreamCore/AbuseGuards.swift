/// How long an address that keeps failing authentication must wait before it may try again:
/// a few failures are free (a mistyped token), then each one doubles the wait, up to a cap. An
/// address is forgotten once it has been quiet for `forgetAfter`.
///
/// A pure value owned by the server; time (nanoseconds, any monotonic origin) is passed in.
public struct AuthenticationBackoff: Sendable {
    public struct Policy: Sendable, Equatable {
        /// Failures before any wait.
        public var freeFailures = 3
        /// The wait after the first failure past the free ones; it doubles with each more.
        public var firstWait: UInt64 = 1_000_000_000
        public var longestWait: UInt64 = 60_000_000_000
        public var forgetAfter: UInt64 = 600_000_000_000
        /// Addresses remembered at once; past it the quietest are forgotten first.
        public var maxAddresses = 16_384
        public init() {}
    }

    private struct Entry: Sendable {
        var failures: Int
        var lastFailure: UInt64
        var blockedUntil: UInt64
    }

    public let policy: Policy
    private var entries: [[UInt8]: Entry] = [:]

    public init(policy: Policy = Policy()) { self.policy = policy }

    /// Addresses remembered now.
    public var count: Int { entries.count }

    /// Nanoseconds `address` must still wait before it may authenticate, or nil if it may now.
    public func wait(for address: [UInt8], now: UInt64) -> UInt64? {
        guard let e = entries[address], now < e.blockedUntil else { return nil }
        return e.blockedUntil - now
    }

    /// `address` failed to authenticate at `now`.
    public mutating func failed(_ address: [UInt8], now: UInt64) {
        var e = entries[address] ?? Entry(failures: 0, lastFailure: now, blockedUntil: 0)
        if now > e.lastFailure, now - e.lastFailure > policy.forgetAfter { e.failures = 0 }
        e.failures += 1
        e.lastFailure = now
        let past = e.failures - policy.freeFailures
        if past > 0 {
            let shift = UInt64(min(past - 1, 40))
            let wait = policy.firstWait > policy.longestWait >> shift ? policy.longestWait : policy.firstWait << shift
            e.blockedUntil = now + min(wait, policy.longestWait)
        }
        if entries[address] == nil, entries.count >= policy.maxAddresses { forgetQuietest(now: now) }
        entries[address] = e
    }

    private mutating func forgetQuietest(now: UInt64) {
        entries = entries.filter { now <= $0.value.lastFailure || now - $0.value.lastFailure <= policy.forgetAfter }
        while entries.count >= policy.maxAddresses, let oldest = entries.min(by: { $0.value.lastFailure < $1.value.lastFailure }) {
            entries[oldest.key] = nil
        }
    }
}

/// Keeps a flood of the same kind of log line (refused connections, failed authentications,
/// refused datagrams) from flooding the log: at most `perWindow` lines of a kind per window;
/// the first line after a window with suppressed ones says how many were left out.
///
/// A pure value owned by the server; time (nanoseconds) is passed in.
public struct LogRateLimit<Kind: Hashable & Sendable>: Sendable {
    public enum Verdict: Equatable, Sendable {
        /// Write the line; `suppressed` lines of its kind were left out before it.
        case write(suppressed: Int)
        case suppress
    }

    private struct Window: Sendable {
        var start: UInt64
        var written: Int
        var suppressed: Int
    }

    public let perWindow: Int
    public let window: UInt64
    private var windows: [Kind: Window] = [:]

    public init(perWindow: Int = 5, window: UInt64 = 1_000_000_000) {
        self.perWindow = perWindow
        self.window = window
    }

    public mutating func line(_ kind: Kind, now: UInt64) -> Verdict {
        var w = windows[kind] ?? Window(start: now, written: 0, suppressed: 0)
        var carried = 0
        if now >= w.start, now - w.start >= window {
            carried = w.suppressed
            w = Window(start: now, written: 0, suppressed: 0)
        }
        defer { windows[kind] = w }
        guard w.written < perWindow else {
            w.suppressed += 1
            return .suppress
        }
        w.written += 1
        return .write(suppressed: carried)
    }
}
