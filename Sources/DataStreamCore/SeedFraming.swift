/// The seed protocol's framing (ASCII size digits, no delimiter, then the bytes), with its
/// ambiguity resolved: see docs/PROTOCOL.md, "Seed TCP".
///
/// When the file itself begins with digits, the digit run at the start of the stream holds the
/// size *and* the first bytes of the file. With D digits (at most 20) read and n data bytes
/// after them, the split after k digits (1 ≤ k ≤ D) declares size s_k and means the file is
/// `digits[k..<D] + data`, complete when `n == s_k - (D - k)`. That need is strictly increasing
/// in k, so at most one split fits any n: the upload is stored only if some split fits exactly,
/// and it never is otherwise. The longest split (k = D) needs the most data: when n reaches it,
/// every shorter split is already overshot, so the upload is complete at once (the server does
/// not wait for the client's close).
///
/// When the stream itself shows where the size ends (the digits came alone in the first read,
/// as the seed client writes them, and the next read begins the file), only the longest split
/// is plausible: `sizeEndsTheRun` keeps the others out, so a cut-short upload cannot pass for a
/// shorter one. A value; it touches nothing.
public struct SeedFraming: Hashable, Sendable {
    /// The most digits the size field can have (UInt64.max has 20).
    public static let maxDigits = SeedDigits.capacity

    /// The digit run (at most `maxDigits`).
    public let digits: SeedDigits
    /// The largest size a split may declare.
    private let maxFileSize: UInt64
    /// The most data bytes any split can take (the largest need, which is the longest valid
    /// split's, as needs grow with k): asked on every read of the upload.
    public let maxData: UInt64
    /// The size the longest split declares (what the seed's own client means when its file does not begin with a digit).
    public let declaredSize: UInt64
    /// The smallest file size any split declares (equal to `declaredSize` unless the file
    /// begins with digits, which only the end of the stream can tell).
    public let smallestSize: UInt64
    /// The index (k - 1) of the longest valid split: the one a complete upload used.
    private let longestSplit: Int
    /// The whole digit run is the size: no shorter split is considered.
    public let sizeEndsTheRun: Bool
    /// Data bytes received after the digit run.
    public private(set) var received: UInt64 = 0

    /// Validates the digit run. Throws if no split declares a size within `maxFileSize`.
    /// One pass over the digits; the values every read or the end of the upload asks for are kept.
    /// With `sizeEndsTheRun`, the run is the size field and nothing else.
    public init(digits: SeedDigits, maxFileSize: UInt64, sizeEndsTheRun: Bool = false) throws(ProtocolError) {
        precondition(!digits.isEmpty && digits.count <= SeedFraming.maxDigits)
        self.digits = digits
        self.maxFileSize = maxFileSize
        self.sizeEndsTheRun = sizeEndsTheRun
        var longest = -1, maxData: UInt64 = 0, smallest = UInt64.max
        SeedFraming.forEachSplit(digits, maxFileSize: maxFileSize, onlyLongest: sizeEndsTheRun) { i, need in
            longest = i
            maxData = need
            smallest = min(smallest, need + UInt64(digits.count - i - 1))
        }
        guard longest >= 0 else {
            throw .invalidSeedSize(digits: String(decoding: digits, as: UTF8.self))
        }
        self.longestSplit = longest
        self.maxData = maxData
        self.declaredSize = maxData + UInt64(digits.count - longest - 1)
        self.smallestSize = smallest
    }

    /// Calls `body(i, need)` for each split k = i + 1 whose size is valid, in order of k: `need`
    /// is the data bytes it takes after the digit run. Nothing is stored per split: a pass is at
    /// most 20 steps, made at the start of an upload (and at its end if the stream ends early).
    @inline(__always)
    private static func forEachSplit(_ digits: SeedDigits, maxFileSize: UInt64, onlyLongest: Bool, _ body: (Int, UInt64) -> Void) {
        var value: UInt64? = 0
        let d = UInt64(digits.count)
        digits.withUnsafeBytes { bytes in
            for (i, c) in bytes.enumerated() {
                if let v = value {
                    let (m, o1) = v.multipliedReportingOverflow(by: 10)
                    let (a, o2) = m.addingReportingOverflow(UInt64(c - 48))
                    value = (o1 || o2) ? nil : a
                }
                let k = UInt64(i + 1)
                if onlyLongest && k < d { continue }
                if let s = value, s <= maxFileSize, s >= d - k { body(i, s - (d - k)) }
            }
        }
    }

    /// How many more data bytes may arrive before the upload is over-long.
    @inlinable public var remainingCapacity: UInt64 { maxData - received }

    /// Counts data bytes; the caller never passes more than `remainingCapacity`.
    public mutating func dataReceived(_ n: UInt64) {
        precondition(n <= remainingCapacity)
        received += n
    }

    /// Whether the upload is complete without waiting for the end of the stream (the longest split fits).
    public var isCompleteWithoutEOF: Bool { received == maxData }

    /// At the end of the stream (or once complete): the digits that belong to the file, to be
    /// put before the data bytes; nil if no split fits, so the upload is broken.
    public var fileDigitsPrefix: SeedDigits? {
        if received == maxData { return digits.droppingFirst(longestSplit + 1) }
        var split: Int? = nil
        SeedFraming.forEachSplit(digits, maxFileSize: maxFileSize, onlyLongest: sizeEndsTheRun) { i, need in
            if split == nil && need == received { split = i }
        }
        return split.map { digits.droppingFirst($0 + 1) }
    }

    /// The final file size for a fitting split.
    public var fileSize: UInt64? { fileDigitsPrefix.map { UInt64($0.count) + received } }
}

/// Up to 20 ASCII digits (the seed size field, or the part of it that belongs to the file),
/// held inline: a seed upload's framing allocates nothing. A value.
public struct SeedDigits: Hashable, Sendable, RandomAccessCollection, ExpressibleByArrayLiteral, CustomStringConvertible {
    /// The most bytes it holds (UInt64.max has 20 digits).
    public static let capacity = 20
    // Bytes 0-7, 8-15, 16-19, lowest byte first; unused bytes are zero (so == and hash work).
    private var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0
    public private(set) var count = 0

    public init() {}

    /// The bytes of `bytes` (at most `capacity`).
    public init<S: Sequence<UInt8>>(_ bytes: S) {
        for b in bytes { append(b) }
    }

    public init(arrayLiteral elements: UInt8...) { self.init(elements) }

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    public subscript(i: Int) -> UInt8 {
        precondition(i >= 0 && i < count, "index out of range")
        let word = i < 8 ? w0 : i < 16 ? w1 : w2
        return UInt8(truncatingIfNeeded: word >> UInt64((i & 7) * 8))
    }

    public var isFull: Bool { count == SeedDigits.capacity }

    /// Adds a byte at the end; the caller checks `isFull` first.
    public mutating func append(_ byte: UInt8) {
        precondition(count < SeedDigits.capacity, "more than \(SeedDigits.capacity) digits")
        let bits = UInt64(byte) << UInt64((count & 7) * 8)
        switch count >> 3 {
        case 0: w0 |= bits
        case 1: w1 |= bits
        default: w2 |= bits
        }
        count += 1
    }

    /// The bytes after the first `k`.
    public func droppingFirst(_ k: Int) -> SeedDigits {
        k >= count ? SeedDigits() : SeedDigits(self[k...])
    }

    /// Calls `body` with the bytes in contiguous memory (on the stack).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var words = (w0.littleEndian, w1.littleEndian, w2.littleEndian)
        let n = count
        return try Swift.withUnsafeBytes(of: &words) { try body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    public var description: String { String(decoding: self, as: UTF8.self) }
}
