/// A number a user typed for a command-line flag, parsed and checked against the flag's range.
///
/// Every numeric flag of `datastream` goes through here, so none can wrap (a port of 70000),
/// trap later (a timeout of `inf` or `1e300`), slip through as `nan`, or be mistaken for a flag
/// (`-5`): each gets one line saying what is wrong.
public enum FlagValue {
    /// Why a value was refused, as the line the user sees (without the program's name).
    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public let description: String
        init(_ flag: String, _ text: String, expected: String) {
            description = "\(flag) must be \(expected), got '\(text)'"
        }
    }

    /// The longest time limit any flag accepts: a year. Longer ones are typos, and every
    /// clock the server keeps counts a year with room to spare.
    public static let longestSeconds: Double = 365 * 86_400

    /// A comma-separated list (spaces around entries ignored, empty entries dropped) whose every
    /// entry `valid` accepts; `expected` says what one must be.
    public static func list(_ text: String, flag: String, expected: String, valid: (String) -> Bool) throws(Invalid) -> [String] {
        let entries = text.split(separator: ",").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
        if let bad = entries.first(where: { !valid($0) }) { throw Invalid(flag, bad, expected: expected) }
        return entries
    }

    /// A whole number in `range`.
    public static func integer(_ text: String, flag: String, in range: ClosedRange<Int>) throws(Invalid) -> Int {
        let expected = "a whole number from \(range.lowerBound) to \(range.upperBound)"
        guard let value = Int(trimmed(text)), range.contains(value) else { throw Invalid(flag, text, expected: expected) }
        return value
    }

    /// A finite number of seconds in `range` (fractions allowed; never inf or nan).
    public static func seconds(_ text: String, flag: String, in range: ClosedRange<Double>) throws(Invalid) -> Double {
        let expected = "a number of seconds from \(format(range.lowerBound)) to \(format(range.upperBound))"
        guard let value = Double(trimmed(text)), value.isFinite, range.contains(value) else { throw Invalid(flag, text, expected: expected) }
        return value
    }

    /// A finite positive number in `range` (a rate, a pause), with `unit` for the message.
    public static func number(_ text: String, flag: String, in range: ClosedRange<Double>, unit: String) throws(Invalid) -> Double {
        let expected = "a number of \(unit) from \(format(range.lowerBound)) to \(format(range.upperBound))"
        guard let value = Double(trimmed(text)), value.isFinite, range.contains(value) else { throw Invalid(flag, text, expected: expected) }
        return value
    }

    /// A byte count (`4096`, `64KiB`, `1GiB`) in `range`.
    public static func bytes(_ text: String, flag: String, in range: ClosedRange<UInt64>) throws(Invalid) -> UInt64 {
        let expected = "a byte count (4096, 64KiB, 1GiB) from \(range.lowerBound) to \(range.upperBound)"
        guard let value = try? ByteCount.parse(trimmed(text)), range.contains(value) else { throw Invalid(flag, text, expected: expected) }
        return value
    }

    /// A TCP or UDP port (0: the system picks one, where `allowZero`).
    public static func port(_ text: String, flag: String, allowZero: Bool = true) throws(Invalid) -> Int {
        try integer(text, flag: flag, in: (allowZero ? 0 : 1)...65_535)
    }

    /// A yes or no: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.
    public static func boolean(_ text: String, flag: String) throws(Invalid) -> Bool {
        switch trimmed(text).lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw Invalid(flag, text, expected: "true or false (yes/no, on/off, 1/0)")
        }
    }

    private static func trimmed(_ text: String) -> String { text.trimmingSpaces() }

    private static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
