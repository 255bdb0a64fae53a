/// Which completion hooks (`--on-stored`) run now and which wait: at most `maxRunning` at once,
/// at most `maxWaiting` in line (past it a hook is dropped, and counted), first come first
/// served. Also decides when a running hook has run too long. Pure; time is passed in.
public struct HookQueue<Job> {
    public let maxRunning: Int
    public let maxWaiting: Int
    /// Nanoseconds a hook may run before it is killed.
    public let timeout: UInt64
    public private(set) var running = 0
    private var waiting: [Job] = []
    private var head = 0

    public init(maxRunning: Int, maxWaiting: Int = 10_000, timeout: UInt64) {
        precondition(maxRunning > 0 && maxWaiting >= 0)
        self.maxRunning = maxRunning
        self.maxWaiting = maxWaiting
        self.timeout = timeout
    }

    public var waitingCount: Int { waiting.count - head }

    public enum Decision {
        /// Start it now.
        case start(Job)
        /// It waits for a running hook to end.
        case queued
        /// The line is full: it does not run.
        case dropped
    }

    /// A file was stored: its hook starts, waits or is dropped.
    public mutating func submit(_ job: Job) -> Decision {
        if running < maxRunning {
            running += 1
            return .start(job)
        }
        guard waitingCount < maxWaiting else { return .dropped }
        waiting.append(job)
        return .queued
    }

    /// A running hook ended (or could not start): the next in line, if any, starts.
    public mutating func finished() -> Job? {
        precondition(running > 0, "a hook ended that was not running")
        guard head < waiting.count else {
            running -= 1
            return nil
        }
        let next = waiting[head]
        head += 1
        if head > 64 && head * 2 > waiting.count {
            waiting.removeFirst(head)
            head = 0
        }
        return next  // it takes the ended hook's place: `running` stays
    }

    /// Whether a hook started at `startedAt` has run past the timeout at `now`.
    public func hasTimedOut(startedAt: UInt64, now: UInt64) -> Bool {
        now > startedAt && now - startedAt >= timeout
    }

    /// The server stops: what still waits is not run. Returns how many.
    public mutating func discardWaiting() -> Int {
        defer { waiting.removeAll(); head = 0 }
        return waitingCount
    }
}
