/// The disk space one upload holds in the server's budget, and how it grows.
///
/// A native upload holds its announced size from the start. A seed upload's size field may have
/// swallowed the file's first digits, so its longest reading is held if it fits, else its
/// shortest; then the hold grows as bytes arrive, in steps of `growthStep`, never past the
/// longest reading, and the upload fails as soon as the budget cannot grow with it.
///
/// A value: the driver asks it what to reserve and tells it what the budget granted.
public struct DiskHold: Hashable, Sendable {
    /// Bytes the hold grows by at a time when arriving bytes pass it.
    public static let growthStep: UInt64 = 16 << 20

    /// Bytes held in the budget now (given back when the upload ends).
    public private(set) var held: UInt64 = 0
    /// Bytes received so far (seed uploads only).
    public private(set) var received: UInt64 = 0
    /// The most the upload can need: its longest reading.
    public private(set) var limit: UInt64 = 0
    /// Whether the hold grows with arriving bytes (seed) or is fixed (native).
    private var grows = false

    public init() {}

    /// A native upload: `size` bytes, held whole.
    public mutating func fixed(_ size: UInt64) {
        self = DiskHold()
        held = size
        limit = size
    }

    /// A seed upload of at most `longest` bytes, of which the budget granted `granted` (the
    /// longest or the shortest reading).
    public mutating func growing(upTo longest: UInt64, granted: UInt64) {
        self = DiskHold()
        held = granted
        limit = longest
        grows = true
    }

    /// `n` more bytes arrived. Returns how many more bytes to reserve (nil: none needed); call
    /// `grew(by:)` once the budget granted them.
    public mutating func bytesArrived(_ n: UInt64) -> UInt64? {
        guard grows else { return nil }
        received += n
        guard received > held else { return nil }
        let target = min(limit, max(received, held + DiskHold.growthStep))
        return target - held
    }

    /// The budget granted `bytes` more.
    public mutating func grew(by bytes: UInt64) {
        held += bytes
    }

    /// The upload ended: returns what to give back to the budget, and holds nothing more.
    public mutating func release() -> UInt64 {
        defer { self = DiskHold() }
        return held
    }
}
