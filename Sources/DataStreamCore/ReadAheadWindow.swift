/// What a sender reads of a file, and when: a range of the file cut into units (a UDP chunk, a
/// seed datagram, a block to hash) held in a ring of `capacity` unit-sized slots. Reads go ahead
/// of the sender one at a time, each as many whole units as fit the free slots without wrapping
/// round the ring's end; the sender releases units it will not need again, which frees their
/// slots.
///
/// A pure value: the driver carries out `nextRead()` (on libuv's threadpool, so the loop never
/// blocks on the disk and never maps the file) and reports the byte count it got back. A short
/// read means the file shrank while it was being sent, and ends the window.
public struct ReadAheadWindow: Sendable, Equatable {
    /// One read to carry out: `count` bytes of the file at `fileOffset`, into the ring at byte
    /// `ringOffset`.
    public struct Read: Sendable, Equatable {
        public let fileOffset: UInt64
        public let ringOffset: Int
        public let count: Int
        public init(fileOffset: UInt64, ringOffset: Int, count: Int) {
            self.fileOffset = fileOffset
            self.ringOffset = ringOffset
            self.count = count
        }
    }

    public enum Completion: Sendable, Equatable {
        /// The read is done: more units are ready.
        case read
        /// The read got fewer bytes than asked without reaching the end of the file: read the
        /// rest with this.
        case readRest(Read)
        /// The file ended at or before byte `endedBefore`, inside the range: it was truncated
        /// while being sent.
        case fileShrank(endedBefore: UInt64)
    }

    public let start: UInt64
    public let end: UInt64
    public let unitSize: Int
    /// Slots in the ring.
    public let capacity: Int
    /// Units in the range.
    public let unitCount: UInt64
    /// Units below this are no longer needed; their slots are free.
    public private(set) var released: UInt64 = 0
    /// Units below this have been read into the ring.
    public private(set) var ready: UInt64 = 0
    /// The read in progress.
    public private(set) var inFlight: Read?
    /// Units the read in progress (with its rest) makes ready.
    private var inFlightUnits = 0
    public private(set) var failed = false
    private let maxUnitsPerRead: Int

    /// The range `start..<end` of a file, `unitSize` bytes to a unit, `capacity` slots, reads
    /// of at most `maxReadBytes` (at least one unit).
    public init(start: UInt64, end: UInt64, unitSize: Int, capacity: Int, maxReadBytes: Int) {
        precondition(unitSize > 0 && capacity > 0 && end >= start)
        self.start = start
        self.end = end
        self.unitSize = unitSize
        self.capacity = capacity
        let size = UInt64(unitSize)
        unitCount = (end - start + size - 1) / size
        maxUnitsPerRead = max(1, min(capacity, maxReadBytes / unitSize))
    }

    /// The bytes the ring needs: no more slots than the range has units.
    public var ringBytes: Int { Int(min(UInt64(capacity), max(unitCount, 1))) * unitSize }

    /// Every unit has been read.
    public var allRead: Bool { ready >= unitCount }

    /// The next read to start, or nil while one is in flight, the ring is full, the range is
    /// read or the window failed. Marks it in flight.
    public mutating func nextRead() -> Read? {
        guard inFlight == nil, !failed, ready < unitCount else { return nil }
        let slots = Int(min(UInt64(capacity), max(unitCount, 1)))
        let free = slots - Int(ready - released)
        guard free > 0 else { return nil }
        let slot = Int(ready % UInt64(slots))
        let units = min(free, slots - slot, maxUnitsPerRead, Int(unitCount - ready))
        let fileOffset = start + ready * UInt64(unitSize)
        let count = Int(min(UInt64(units * unitSize), end - fileOffset))
        let read = Read(fileOffset: fileOffset, ringOffset: slot * unitSize, count: count)
        inFlight = read
        inFlightUnits = units
        return read
    }

    /// The read in flight returned `got` bytes (0 at the end of the file).
    public mutating func completed(got: Int) -> Completion {
        guard let read = inFlight else { preconditionFailure("no read in flight") }
        if got >= read.count {
            inFlight = nil
            ready += UInt64(inFlightUnits)
            return .read
        }
        if got > 0 {
            let rest = Read(fileOffset: read.fileOffset + UInt64(got), ringOffset: read.ringOffset + got, count: read.count - got)
            inFlight = rest
            return .readRest(rest)
        }
        inFlight = nil
        failed = true
        return .fileShrank(endedBefore: read.fileOffset)
    }

    /// The sender will not need units below `unit` again.
    public mutating func release(below unit: UInt64) {
        released = max(released, min(unit, ready))
    }

    /// Unit `unit` is in the ring: `ringOffset` and `count` locate its bytes.
    public func location(of unit: UInt64) -> (ringOffset: Int, count: Int)? {
        guard unit >= released, unit < ready else { return nil }
        let slots = UInt64(min(UInt64(capacity), max(unitCount, 1)))
        let fileOffset = start + unit * UInt64(unitSize)
        return (Int(unit % slots) * unitSize, Int(min(UInt64(unitSize), end - fileOffset)))
    }
}
