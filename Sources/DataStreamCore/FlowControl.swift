/// High and low water marks over a count of buffered bytes: above `high`, pause the producer;
/// at or below `low`, resume it. Used per connection and for the whole process. A value.
public struct WaterMarks: Hashable, Sendable {
    public let low: Int
    public let high: Int
    public private(set) var buffered = 0
    public private(set) var isPaused = false

    public init(low: Int, high: Int) {
        precondition(low <= high)
        self.low = low
        self.high = high
    }

    /// What the caller must do with its producer after a change.
    public enum Decision: Hashable, Sendable { case none, pause, resume }

    /// Bytes were buffered (received, not yet on disk).
    public mutating func added(_ n: Int) -> Decision {
        buffered += n
        if !isPaused && buffered > high {
            isPaused = true
            return .pause
        }
        return .none
    }

    /// Bytes left the buffer (written to disk, or dropped).
    public mutating func removed(_ n: Int) -> Decision {
        buffered -= n
        precondition(buffered >= 0, "removed more than was added")
        if isPaused && buffered <= low {
            isPaused = false
            return .resume
        }
        return .none
    }
}
