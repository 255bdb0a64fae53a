// Foundation for Unicode normalisation only (NFC); nothing here touches a file or the clock.
import Foundation

/// How client-given names become names inside the target directory. Pure functions.
///
/// A sanitised name is always a single path component: separators and control characters
/// become `_`, leading dots become `_` (no hidden files, no `.` or `..`, nothing can reach the
/// server's own `.datastream` folder). It can never escape the target directory.
///
/// Names that look alike are made alike: the name is normalised to NFC (so `café` typed
/// precomposed or decomposed is one name, and the second upload gets `café-1`), and invisible
/// format characters (bidirectional overrides such as U+202E, zero-width characters, the byte
/// order mark) become `_` like control characters, so `photo\u{202E}gnp.exe` cannot pass for
/// `photoexe.png`.
public enum NamePolicy {
    /// The longest client name accepted, in UTF-8 bytes (leaves room for a unique suffix under NAME_MAX 255).
    public static let defaultMaxLength = 240

    /// The sanitised name, or an error for names that cannot be used.
    public static func sanitise(_ raw: [UInt8], maxLength: Int = defaultMaxLength) throws(ProtocolError) -> String {
        guard !raw.isEmpty else { throw .invalidName(reason: "empty") }
        guard raw.count <= maxLength else { throw .invalidName(reason: "\(raw.count) bytes, the limit is \(maxLength)") }
        guard let decoded = String(validating: raw, as: UTF8.self) else { throw .invalidName(reason: "not valid UTF-8") }
        let text = decoded.precomposedStringWithCanonicalMapping
        var out = ""
        out.reserveCapacity(raw.count)
        var leading = true
        for scalar in text.unicodeScalars {
            let v = scalar.value
            let bad = v < 0x20 || v == 0x7F || (v >= 0x80 && v < 0xA0) || scalar == "/" || scalar == "\\" || v == 0x2028 || v == 0x2029
                || scalar.properties.generalCategory == .format
            if bad || (leading && scalar == ".") {
                out.unicodeScalars.append("_")
            } else {
                out.unicodeScalars.append(scalar)
            }
            if !(leading && scalar == ".") { leading = false }
        }
        // Normalising can lengthen a name (a few characters never recompose).
        guard out.utf8.count <= maxLength else { throw .invalidName(reason: "\(out.utf8.count) bytes once normalised, the limit is \(maxLength)") }
        return out
    }

    /// The last collision attempt the store makes before it gives up on a name (`name-10000`):
    /// storing tries `candidate(name, attempt:)` for 0 through this, in order.
    public static let lastAttempt = 10_000

    /// The name to try on the `attempt`-th collision: `report.pdf`, `report-1.pdf`, `report-2.pdf`, ...
    public static func candidate(_ name: String, attempt: Int) -> String {
        guard attempt > 0 else { return name }
        if let dot = name.lastIndex(of: "."), dot != name.startIndex {
            return "\(name[..<dot])-\(attempt)\(name[dot...])"
        }
        return "\(name)-\(attempt)"
    }

    /// The generated name of a seed-protocol upload: `upload-20261123T011500Z-42.bin`.
    public static func seedUploadName(utcSeconds: Int, counter: UInt64) -> String {
        SeedUploadName(utcSeconds: utcSeconds, counter: counter).description
    }

    /// The part of `seedUploadName` before the counter (`upload-20261123T011500Z-`).
    public static func seedUploadNamePrefix(utcSeconds: Int) -> String {
        let name = SeedUploadName(utcSeconds: utcSeconds, counter: 0)
        return String(unsafeUninitializedCapacity: SeedUploadName.capacity) { out in
            name.writePrefix(into: UnsafeMutableRawBufferPointer(out))
        }
    }

    /// Seconds since the epoch in UTC as (year, month, day, hour, minute, second), by Howard
    /// Hinnant's days-to-civil algorithm.
    static func civil(_ t: Int) -> (year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) {
        let days = t >= 0 ? t / 86400 : (t - 86399) / 86400
        let secs = t - days * 86400
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        return (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// A seed upload's generated name as its parts: the UTC second it was named in, the counter,
/// and the collision attempt (`NamePolicy.candidate`): `upload-20261123T011500Z-42.bin`, or
/// `upload-20261123T011500Z-42-1.bin` for the first collision. A busy receiver names thousands
/// of uploads a second: the text is written into the caller's buffer (`write(into:)`) where a
/// system call needs it, and made a `String` only where one is shown (`description`). Three
/// integers, so handing one to another thread costs no reference counting. A value; it
/// touches nothing.
public struct SeedUploadName: Sendable, Hashable, CustomStringConvertible {
    /// Seconds since the epoch (UTC), at least 0.
    public let utcSeconds: Int
    public let counter: UInt64
    /// 0 for the name itself, n for its n-th collision candidate.
    public var attempt: Int

    public init(utcSeconds: Int, counter: UInt64, attempt: Int = 0) {
        precondition(utcSeconds >= 0, "a time before 1970")
        self.utcSeconds = utcSeconds
        self.counter = counter
        self.attempt = attempt
    }

    /// The most bytes `write(into:)` writes, NUL included.
    public static let capacity = 96

    /// Writes the name as UTF-8 followed by a NUL (a C string) into `out`, which holds at least
    /// `capacity` bytes; returns its length without the NUL.
    public func write(into out: UnsafeMutableRawBufferPointer) -> Int {
        writeRest(into: out, at: writePrefix(into: out))
    }

    /// Writes what follows the prefix (`42.bin`, `42-1.bin`) from `start` on, and a NUL;
    /// returns the name's length.
    func writeRest(into out: UnsafeMutableRawBufferPointer, at start: Int) -> Int {
        var i = SeedUploadName.writeDecimal(counter, width: 1, into: out, at: start)
        if attempt > 0 {
            out[i] = 0x2D  // "-"
            i = SeedUploadName.writeDecimal(UInt64(attempt), width: 1, into: out, at: i + 1)
        }
        for b in ".bin".utf8 { out[i] = b; i += 1 }
        out[i] = 0
        return i
    }

    /// Writes `upload-YYYYMMDDTHHMMSSZ-` (no NUL); returns its length.
    func writePrefix(into out: UnsafeMutableRawBufferPointer) -> Int {
        precondition(out.count >= SeedUploadName.capacity)
        var i = 0
        for b in "upload-".utf8 { out[i] = b; i += 1 }
        let t = NamePolicy.civil(utcSeconds)
        i = SeedUploadName.writeDecimal(UInt64(t.year), width: 4, into: out, at: i)
        let p = out.baseAddress!
        func two(_ v: Int, at k: Int) {
            p.storeBytes(of: 0x30 + UInt8(truncatingIfNeeded: v / 10), toByteOffset: k, as: UInt8.self)
            p.storeBytes(of: 0x30 + UInt8(truncatingIfNeeded: v % 10), toByteOffset: k + 1, as: UInt8.self)
        }
        two(t.month, at: i)
        two(t.day, at: i + 2)
        out[i + 4] = 0x54  // "T"
        two(t.hour, at: i + 5)
        two(t.minute, at: i + 7)
        two(t.second, at: i + 9)
        out[i + 11] = 0x5A  // "Z"
        out[i + 12] = 0x2D  // "-"
        return i + 13
    }

    /// Writes `value` in decimal, zero-padded to at least `width` digits; returns the end.
    private static func writeDecimal(_ value: UInt64, width: Int, into out: UnsafeMutableRawBufferPointer, at start: Int) -> Int {
        var count = 1, rest = value / 10
        while rest > 0 { count += 1; rest /= 10 }
        count = max(count, width)
        precondition(start + count <= out.count)
        let p = out.baseAddress! + start
        var v = value, k = count
        while k > 0 {
            k -= 1
            p.storeBytes(of: 0x30 + UInt8(truncatingIfNeeded: v % 10), toByteOffset: k, as: UInt8.self)
            v /= 10
        }
        return start + count
    }

    public var description: String {
        String(unsafeUninitializedCapacity: SeedUploadName.capacity) { out in
            write(into: UnsafeMutableRawBufferPointer(out))
        }
    }

    /// Writes names as `write(into:)` does, formatting the date part once per second: a batch
    /// of uploads stored together was mostly named in the same second. One per batch (or
    /// thread); a value.
    public struct Formatter {
        private var second = -1
        private var prefix: [UInt8] = []

        public init() {}

        /// `name.write(into: out)`.
        public mutating func write(_ name: SeedUploadName, into out: UnsafeMutableRawBufferPointer) -> Int {
            precondition(out.count >= SeedUploadName.capacity)
            if name.utcSeconds != second {
                second = name.utcSeconds
                prefix = [UInt8](unsafeUninitializedCapacity: SeedUploadName.capacity) { buffer, count in
                    count = name.writePrefix(into: UnsafeMutableRawBufferPointer(buffer))
                }
            }
            prefix.withUnsafeBytes { out.copyMemory(from: $0) }
            return name.writeRest(into: out, at: prefix.count)
        }
    }
}
