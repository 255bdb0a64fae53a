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
/// not wait for the client's close). A value; it touches nothing.
public struct SeedFraming: Hashable, Sendable {
    /// The most digits the size field can have (UInt64.max has 20).
    public static let maxDigits = 20

    /// The digit run (at most `maxDigits`).
    public let digits: [UInt8]
    /// For each split k (index k-1): the data bytes it needs after the digit run, nil if its size is invalid.
    private let needs: [UInt64?]
    /// The most data bytes any split can take (the largest of `needs`), computed once: it is
    /// asked on every read of the upload.
    public let maxData: UInt64
    /// Data bytes received after the digit run.
    public private(set) var received: UInt64 = 0

    /// Validates the digit run. Throws if no split declares a size within `maxFileSize`.
    public init(digits: [UInt8], maxFileSize: UInt64) throws(ProtocolError) {
        precondition(!digits.isEmpty && digits.count <= SeedFraming.maxDigits)
        self.digits = digits
        var needs: [UInt64?] = []
        needs.reserveCapacity(digits.count)
        var value: UInt64? = 0
        let d = UInt64(digits.count)
        for (i, c) in digits.enumerated() {
            if let v = value {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(UInt64(c - 48))
                value = (o1 || o2) ? nil : a
            }
            let k = UInt64(i + 1)
            if let s = value, s <= maxFileSize, s >= d - k {
                needs.append(s - (d - k))
            } else {
                needs.append(nil)
            }
        }
        guard needs.contains(where: { $0 != nil }) else {
            throw .invalidSeedSize(digits: String(decoding: digits, as: UTF8.self))
        }
        self.needs = needs
        self.maxData = needs.reduce(0) { max($0, $1 ?? 0) }
    }

    /// The size the longest split declares (what the seed's own client means when its file does not begin with a digit).
    public var declaredSize: UInt64 {
        guard let k = needs.lastIndex(where: { $0 != nil }) else { return 0 }
        return needs[k]! + UInt64(digits.count - k - 1)
    }

    /// The smallest file size any split declares (equal to `declaredSize` unless the file
    /// begins with digits, which only the end of the stream can tell).
    public var smallestSize: UInt64 {
        var smallest = UInt64.max
        for (i, need) in needs.enumerated() {
            if let need { smallest = min(smallest, need + UInt64(digits.count - i - 1)) }
        }
        return smallest
    }

    /// How many more data bytes may arrive before the upload is over-long.
    public var remainingCapacity: UInt64 { maxData - received }

    /// Counts data bytes; the caller never passes more than `remainingCapacity`.
    public mutating func dataReceived(_ n: UInt64) {
        precondition(n <= remainingCapacity)
        received += n
    }

    /// Whether the upload is complete without waiting for the end of the stream (the longest split fits).
    public var isCompleteWithoutEOF: Bool { received == maxData }

    /// At the end of the stream (or once complete): the digits that belong to the file, to be
    /// put before the data bytes; nil if no split fits, so the upload is broken.
    public var fileDigitsPrefix: [UInt8]? {
        for (i, need) in needs.enumerated() where need == received {
            return Array(digits[(i + 1)...])
        }
        return nil
    }

    /// The final file size for a fitting split.
    public var fileSize: UInt64? { fileDigitsPrefix.map { UInt64($0.count) + received } }
}
