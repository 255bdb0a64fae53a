/// An open-model load (`datastream bench --rate R`): upload `i` is due at `start + i / R`,
/// whether or not earlier uploads have finished, as wrk2 schedules its requests. The generator
/// asks which uploads are due now and starts them; one that starts late (the generator or the
/// connection cap held it up) still has its latency counted from when it was due, so a stalled
/// receiver cannot hide its stall by slowing the load (coordinated omission).
///
/// A pure value; times are nanoseconds on any monotonic clock, passed in.
public struct OpenLoadSchedule: Sendable, Equatable {
    /// Uploads per second.
    public let rate: Double
    public let start: UInt64
    /// Uploads handed out so far (the next one's index).
    public private(set) var started: UInt64 = 0
    /// The most a start came after its due time, nanoseconds.
    public private(set) var maxLag: UInt64 = 0
    /// Starts that came after their due time by more than `lateAfter`.
    public private(set) var lateStarts: UInt64 = 0
    /// A start later than this after its due time counts as late (1 ms: the loop's timer).
    public let lateAfter: UInt64

    public init(rate: Double, start: UInt64, lateAfter: UInt64 = 1_000_000) {
        precondition(rate > 0 && rate.isFinite)
        self.rate = rate
        self.start = start
        self.lateAfter = lateAfter
    }

    /// When upload `index` is due.
    public func due(_ index: UInt64) -> UInt64 {
        start &+ UInt64((Double(index) * 1e9 / rate).rounded(.down))
    }

    /// How many uploads are due by `now` and not yet started.
    public func dueCount(now: UInt64) -> UInt64 {
        guard now >= start else { return 0 }
        let dueByNow = UInt64((Double(now - start) * rate / 1e9).rounded(.down)) + 1
        return dueByNow > started ? dueByNow - started : 0
    }

    /// The next due upload starts now: returns its index and due time, and notes how late it is.
    public mutating func startNext(now: UInt64) -> (index: UInt64, dueAt: UInt64) {
        let index = started
        let at = due(index)
        started += 1
        if now > at {
            maxLag = max(maxLag, now - at)
            if now - at > lateAfter { lateStarts += 1 }
        }
        return (index, at)
    }

    /// Nanoseconds until the next upload is due (0 if it is due already).
    public func untilNext(now: UInt64) -> UInt64 {
        let at = due(started)
        return at > now ? at - now : 0
    }

    /// An upload due at `dueAt`, started at `startedAt`, finished at `finishedAt`: its latency
    /// counted from when it was due (corrected) and from when it started (uncorrected).
    public static func latency(dueAt: UInt64, startedAt: UInt64, finishedAt: UInt64) -> (corrected: UInt64, uncorrected: UInt64) {
        (finishedAt > dueAt ? finishedAt - dueAt : 0, finishedAt > startedAt ? finishedAt - startedAt : 0)
    }
}
