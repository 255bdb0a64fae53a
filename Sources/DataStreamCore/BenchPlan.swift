// What `datastream bench` sends, as pure values: sizes per upload, and bytes derived from a seed
// and the upload's index, so that the files a receiver stored can be checked afterwards without
// any record of the run beyond the seed.

/// A command-line argument `datastream bench` cannot use: one line saying which and why.
public struct BenchArgumentError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Byte counts as people write them: `4096`, `64KiB`, `1MiB`, `1GiB`, `1TiB`, `1MB` (decimal), `1k` (= KiB).
/// Used by `datastream bench` for sizes and by `datastream serve` for its limits.
public enum ByteCount {
    public static func parse(_ text: String) throws(BenchArgumentError) -> UInt64 {
        let t = text.trimmingSpaces()
        let digits = t.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let value = UInt64(digits) else {
            throw BenchArgumentError("'\(text)' is not a byte count (examples: 4096, 64KiB, 1MiB)")
        }
        let unit = t.dropFirst(digits.count).lowercased()
        let multiplier: UInt64
        switch unit {
        case "", "b": multiplier = 1
        case "k", "kib": multiplier = 1 << 10
        case "m", "mib": multiplier = 1 << 20
        case "g", "gib": multiplier = 1 << 30
        case "t", "tib": multiplier = 1 << 40
        case "kb": multiplier = 1_000
        case "mb": multiplier = 1_000_000
        case "gb": multiplier = 1_000_000_000
        case "tb": multiplier = 1_000_000_000_000
        default: throw BenchArgumentError("'\(text)': unknown unit '\(unit)' (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")
        }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { throw BenchArgumentError("'\(text)' is too large") }
        return product
    }
}

/// The size of each upload: one size, a uniform range, or a list to pick from.
/// Written `1MiB`, `4KiB-64KiB`, or `4KiB,1MiB,16MiB`.
public enum SizeDistribution: Equatable, Sendable, CustomStringConvertible {
    case fixed(UInt64)
    case uniform(ClosedRange<UInt64>)
    case list([UInt64])

    public init(parsing text: String) throws(BenchArgumentError) {
        if text.contains(",") {
            var sizes: [UInt64] = []
            for part in text.split(separator: ",", omittingEmptySubsequences: false) {
                sizes.append(try ByteCount.parse(String(part)))
            }
            self = .list(sizes)
        } else if let dash = text.firstIndex(of: "-") {
            let low = try ByteCount.parse(String(text[..<dash]))
            let high = try ByteCount.parse(String(text[text.index(after: dash)...]))
            guard low <= high else { throw BenchArgumentError("size range '\(text)': the low end is above the high end") }
            self = .uniform(low...high)
        } else {
            self = .fixed(try ByteCount.parse(text))
        }
    }

    /// The size of upload `index` of a run with `seed`: the same every time.
    public func size(of index: UInt64, seed: UInt64) -> UInt64 {
        switch self {
        case .fixed(let n):
            return n
        case .uniform(let r):
            let width = r.upperBound - r.lowerBound
            if width == .max { return mix(seed ^ 0x5A5A_0000, index) }
            return r.lowerBound + mix(seed ^ 0x5A5A_0000, index) % (width + 1)
        case .list(let sizes):
            return sizes[Int(mix(seed ^ 0xA5A5_0000, index) % UInt64(sizes.count))]
        }
    }

    /// The largest size this distribution gives.
    public var maximum: UInt64 {
        switch self {
        case .fixed(let n): return n
        case .uniform(let r): return r.upperBound
        case .list(let s): return s.max() ?? 0
        }
    }

    public var description: String {
        switch self {
        case .fixed(let n): return "\(n) B"
        case .uniform(let r): return "\(r.lowerBound)-\(r.upperBound) B uniform"
        case .list(let s): return s.map(String.init).joined(separator: ",") + " B"
        }
    }
}

/// SplitMix64 of `a` and `b`: the one source of derived numbers in a bench run.
@inline(__always)
func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
    var z = a &+ b &* 0x9E37_79B9_7F4A_7C15 &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// The bytes of every upload of a run. Upload `i` is a 16-byte header (`DSB1`, the low 32 bits
/// of the seed, `i`, little-endian) followed by a window of a pseudo-random pattern that starts at
/// an offset derived from `i`, cut to the upload's size. The pattern (about 1 MiB, made once from
/// the seed) is stored twice over so every window up to `windowLimit` bytes is one contiguous
/// slice: a sender writes straight from it, without generating or copying bytes per upload.
///
/// Owns its pattern memory; immutable after `init`, so one instance serves every upload.
public final class BenchContent: @unchecked Sendable {
    public static let headerLength = 16
    /// A prime, so the window offsets of consecutive indices are all different.
    public static let patternLength = 1_048_573
    /// The longest slice `window(of:offset:count:)` returns.
    public static let windowLimit = 256 * 1024
    public let seed: UInt64
    private let pattern: UnsafeMutableRawBufferPointer
    private let base: Int
    private let stride: Int

    public init(seed: UInt64) {
        self.seed = seed
        let total = Self.patternLength + Self.windowLimit
        pattern = .allocate(byteCount: (total + 7) & ~7, alignment: 8)
        var words = pattern.bindMemory(to: UInt64.self)
        for k in 0..<words.count { words[k] = mix(seed, UInt64(k)) }
        words = UnsafeMutableBufferPointer(start: nil, count: 0)
        // The tail repeats the start, so windows never wrap.
        pattern.baseAddress!.advanced(by: Self.patternLength)
            .copyMemory(from: pattern.baseAddress!, byteCount: Self.windowLimit)
        base = Int(mix(seed, 0xB0) % UInt64(Self.patternLength))
        stride = 1 + Int(mix(seed, 0xB1) % UInt64(Self.patternLength - 1))
    }

    deinit { pattern.deallocate() }

    /// Where upload `index`'s bytes after the header start in the pattern.
    func start(of index: UInt64) -> Int {
        let p = UInt64(Self.patternLength)
        return Int((UInt64(base) + (index % p) * UInt64(stride)) % p)
    }

    /// The 16-byte header of upload `index`.
    public func header(of index: UInt64) -> [UInt8] {
        var h: [UInt8] = []
        appendHeader(of: index, count: Self.headerLength, to: &h)
        return h
    }

    /// Appends the first `count` bytes of `header(of:)` to `bytes` (one allocation at most, for
    /// a sender that puts framing before them).
    public func appendHeader(of index: UInt64, count: Int, to bytes: inout [UInt8]) {
        var h = (UInt32(0x3142_5344).littleEndian, UInt32(truncatingIfNeeded: seed).littleEndian, index.littleEndian)  // "DSB1"
        bytes.reserveCapacity(bytes.count + count)
        withUnsafeBytes(of: &h) { bytes.append(contentsOf: $0.prefix(min(count, Self.headerLength))) }
    }

    /// The upload index a file's first 16 bytes name, if they are a header of this run.
    public func index(fromHeader bytes: some Collection<UInt8>) -> UInt64? {
        let b = Array(bytes.prefix(Self.headerLength))
        guard b.count == Self.headerLength, b[0..<4].elementsEqual([0x44, 0x53, 0x42, 0x31]) else { return nil }
        let seedLow = b[4..<8].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard seedLow == UInt32(truncatingIfNeeded: seed) else { return nil }
        return b[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// The bytes of upload `index` from `offset` (counted from the file's start, at or past the
    /// header), at most `count` and at most `windowLimit`: a slice of the shared pattern.
    public func window(of index: UInt64, offset: UInt64, count: Int) -> UnsafeRawBufferPointer {
        precondition(offset >= UInt64(Self.headerLength))
        let within = (UInt64(start(of: index)) + offset - UInt64(Self.headerLength)) % UInt64(Self.patternLength)
        let n = min(count, Self.windowLimit)
        return UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(pattern)[Int(within)..<(Int(within) + n)])
    }

    /// Calls `body` with upload `index`'s bytes from `offset` on, in slices, until `count` bytes.
    public func forEachSlice(of index: UInt64, from offset: UInt64, count: UInt64, _ body: (UnsafeRawBufferPointer) -> Void) {
        var at = offset
        let end = offset + count
        if at < UInt64(Self.headerLength) {
            let h = header(of: index)
            let n = Int(min(UInt64(Self.headerLength), end) - at)
            h.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[Int(at)..<(Int(at) + n)])) }
            at += UInt64(n)
        }
        while at < end {
            let w = window(of: index, offset: at, count: Int(min(end - at, UInt64(Self.windowLimit))))
            body(w)
            at += UInt64(w.count)
        }
    }

    /// Whether `bytes` are exactly upload `index`'s bytes at `offset`.
    public func matches(_ bytes: UnsafeRawBufferPointer, index: UInt64, offset: UInt64) -> Bool {
        var checked = 0
        var equal = true
        forEachSlice(of: index, from: offset, count: UInt64(bytes.count)) { slice in
            guard equal else { return }
            let mine = UnsafeRawBufferPointer(rebasing: bytes[checked..<(checked + slice.count)])
            equal = memcmpEqual(mine, slice)
            checked += slice.count
        }
        return equal
    }
}

@inline(__always)
private func memcmpEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    if a.count == 0 { return true }
    // Word at a time, then the rest.
    let words = a.count / 8
    for k in 0..<words where a.loadUnaligned(fromByteOffset: k * 8, as: UInt64.self) != b.loadUnaligned(fromByteOffset: k * 8, as: UInt64.self) {
        return false
    }
    for k in (words * 8)..<a.count where a[k] != b[k] { return false }
    return true
}

/// Spaces around a value a user typed are not part of it.
extension String {
    func trimmingSpaces() -> String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
