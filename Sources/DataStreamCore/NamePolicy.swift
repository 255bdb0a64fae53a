/// How client-given names become names inside the target directory. Pure functions.
///
/// A sanitised name is always a single path component: separators and control characters
/// become `_`, leading dots become `_` (no hidden files, no `.` or `..`, nothing can reach the
/// server's own `.datastream` folder). It can never escape the target directory.
public enum NamePolicy {
    /// The longest client name accepted, in UTF-8 bytes (leaves room for a unique suffix under NAME_MAX 255).
    public static let defaultMaxLength = 240

    /// The sanitised name, or an error for names that cannot be used.
    public static func sanitise(_ raw: [UInt8], maxLength: Int = defaultMaxLength) throws(ProtocolError) -> String {
        guard !raw.isEmpty else { throw .invalidName(reason: "empty") }
        guard raw.count <= maxLength else { throw .invalidName(reason: "\(raw.count) bytes, the limit is \(maxLength)") }
        guard let text = String(validating: raw, as: UTF8.self) else { throw .invalidName(reason: "not valid UTF-8") }
        var out = ""
        out.reserveCapacity(raw.count)
        var leading = true
        for scalar in text.unicodeScalars {
            let v = scalar.value
            let bad = v < 0x20 || v == 0x7F || (v >= 0x80 && v < 0xA0) || scalar == "/" || scalar == "\\" || v == 0x2028 || v == 0x2029
            if bad || (leading && scalar == ".") {
                out.unicodeScalars.append("_")
            } else {
                out.unicodeScalars.append(scalar)
            }
            if !(leading && scalar == ".") { leading = false }
        }
        return out
    }

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
        seedUploadName(prefix: seedUploadNamePrefix(utcSeconds: utcSeconds), counter: counter)
    }

    /// `seedUploadName` from its prefix (`seedUploadNamePrefix`).
    public static func seedUploadName(prefix: String, counter: UInt64) -> String {
        SeedUploadName(prefix: prefix, counter: counter).description
    }

    /// The part of `seedUploadName` before the counter (`upload-20261123T011500Z-`): the same for
    /// every upload stored in that second, so a busy receiver formats it once per second.
    public static func seedUploadNamePrefix(utcSeconds: Int) -> String {
        let (date, time) = civil(utcSeconds)
        return "upload-\(date)T\(time)Z-"
    }

    /// Formats seconds since the epoch as (yyyyMMdd, HHmmss) in UTC.
    static func civil(_ t: Int) -> (String, String) {
        let days = t >= 0 ? t / 86400 : (t - 86399) / 86400
        let secs = t - days * 86400
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func p(_ v: Int, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
        return (p(y, 4) + p(m, 2) + p(d, 2), p(secs / 3600, 2) + p(secs / 60 % 60, 2) + p(secs % 60, 2))
    }
}

/// A seed upload's generated name as its parts: `prefix` (`NamePolicy.seedUploadNamePrefix`,
/// the same for every upload named in that second), the counter, and the collision attempt
/// (`NamePolicy.candidate`). A busy receiver names thousands of uploads a second: the text is
/// written into the caller's buffer (`write(into:)`) where a system call needs it, and made a
/// `String` only where one is shown (`description`). A value; it touches nothing.
public struct SeedUploadName: Sendable, Hashable, CustomStringConvertible {
    public let prefix: String
    public let counter: UInt64
    /// 0 for the name itself, n for its n-th collision candidate (`…-42-n.bin`).
    public var attempt: Int

    public init(prefix: String, counter: UInt64, attempt: Int = 0) {
        self.prefix = prefix
        self.counter = counter
        self.attempt = attempt
    }

    /// The most bytes `write(into:)` writes for a prefix of `prefixLength` bytes (NUL included).
    public static func capacity(prefixLength: Int) -> Int { prefixLength + 20 + 1 + 20 + 4 + 1 }

    /// Writes the name as UTF-8 followed by a NUL (a C string) into `out`, which holds at least
    /// `capacity(prefixLength:)` bytes; returns its length without the NUL.
    public func write(into out: UnsafeMutableRawBufferPointer) -> Int {
        var prefix = prefix
        var i = prefix.withUTF8 { head in
            precondition(out.count >= SeedUploadName.capacity(prefixLength: head.count))
            out.copyMemory(from: UnsafeRawBufferPointer(head))
            return head.count
        }
        i = SeedUploadName.writeDecimal(counter, into: out, at: i)
        if attempt > 0 {
            out[i] = 0x2D  // "-"
            i = SeedUploadName.writeDecimal(UInt64(attempt), into: out, at: i + 1)
        }
        for b in ".bin".utf8 { out[i] = b; i += 1 }
        out[i] = 0
        return i
    }

    private static func writeDecimal(_ value: UInt64, into out: UnsafeMutableRawBufferPointer, at start: Int) -> Int {
        var count = 1, rest = value / 10
        while rest > 0 { count += 1; rest /= 10 }
        var v = value
        for k in (start..<(start + count)).reversed() {
            out[k] = 0x30 + UInt8(v % 10)
            v /= 10
        }
        return start + count
    }

    public var description: String {
        String(unsafeUninitializedCapacity: SeedUploadName.capacity(prefixLength: prefix.utf8.count)) { out in
            write(into: UnsafeMutableRawBufferPointer(out))
        }
    }
}
