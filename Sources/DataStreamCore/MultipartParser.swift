import Foundation  // percent-decoding of RFC 5987 file names only

/// A streaming reader of `multipart/form-data` bodies (RFC 7578): part heads, part bytes and
/// part ends, without ever holding a part whole. Pure.
///
/// Bytes of a part come out as ranges of the input given, except where a read ended inside
/// what might have been the delimiter and was not: those few bytes (at most the delimiter's
/// length) come out of the parser's own memory, as `.carried`.
public struct MultipartParser {
    /// What one call found, in order. Parsing stops after `.partBegan` and after `.partEnded`
    /// (the caller opens or stores a file), and at `.finished`.
    public enum Event {
        case partBegan(Part)
        /// Part bytes in the input.
        case data(UnsafeRawBufferPointer)
        /// Part bytes the parser held from an earlier input (copy them).
        case carried([UInt8])
        case partEnded
        /// The closing delimiter: nothing more is read (an epilogue is ignored).
        case finished
    }

    /// A part's head.
    public struct Part: Hashable, Sendable {
        /// The form field's name.
        public var field: String?
        /// The file name the client gave (raw bytes, not yet sanitised): nil for a plain field.
        public var filename: [UInt8]?
    }

    public struct Failure: Error, Hashable, CustomStringConvertible {
        public let description: String
    }

    /// The longest part head accepted.
    public static let maxPartHead = 8192

    private enum State { case preamble, afterDelimiter, head, body, done }
    private var state: State = .preamble
    /// "\r\n--BOUNDARY"
    private let delimiter: [UInt8]
    /// A prefix of `delimiter` seen at the end of the last input.
    private var carry: [UInt8] = []
    private var head: [UInt8] = []
    private var afterDelimiter: [UInt8] = []

    /// The boundary of a `Content-Type: multipart/form-data; boundary=...` value, or nil.
    public static func boundary(contentType: String) -> String? {
        let parts = contentType.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.first?.lowercased() == "multipart/form-data" else { return nil }
        for p in parts.dropFirst() where p.lowercased().hasPrefix("boundary=") {
            var b = String(p.dropFirst("boundary=".count))
            if b.hasPrefix("\""), b.hasSuffix("\""), b.count >= 2 { b = String(b.dropFirst().dropLast()) }
            return (1...70).contains(b.utf8.count) ? b : nil
        }
        return nil
    }

    public init(boundary: String) {
        delimiter = Array("\r\n--\(boundary)".utf8)
        // The first delimiter may open the body with no CRLF before it.
        carry = [0x0D, 0x0A]
    }

    public var isFinished: Bool { state == .done }

    /// Reads from the start of `input`; returns how many bytes it took (call again with the rest).
    public mutating func parse(_ input: UnsafeRawBufferPointer, _ emit: (Event) -> Void) throws(Failure) -> Int {
        var at = 0
        while at < input.count {
            switch state {
            case .done:
                return input.count  // the epilogue
            case .preamble, .body:
                let inBody = state == .body
                let (taken, found) = scan(UnsafeRawBufferPointer(rebasing: input[at...]), emitData: inBody ? emit : { _ in })
                at += taken
                if found {
                    state = .afterDelimiter
                    afterDelimiter = []
                    if inBody {
                        emit(.partEnded)
                        return at
                    }
                }
            case .afterDelimiter:
                afterDelimiter.append(input[at])
                at += 1
                if afterDelimiter == [0x2D, 0x2D] {  // "--": the last
                    state = .done
                    emit(.finished)
                    return input.count
                }
                if afterDelimiter.last == 0x0A {
                    state = .head
                    head = []
                } else if afterDelimiter.count > 64 {
                    throw Failure(description: "a delimiter followed by neither CRLF nor --")
                }
            case .head:
                head.append(input[at])
                at += 1
                if head.count > MultipartParser.maxPartHead { throw Failure(description: "a part head longer than \(MultipartParser.maxPartHead) bytes") }
                if head.count >= 2, head[head.count - 2] == 0x0D, head[head.count - 1] == 0x0A,
                   head.count == 2 || (head.count >= 4 && head[head.count - 4] == 0x0D && head[head.count - 3] == 0x0A) {
                    state = .body
                    emit(.partBegan(try MultipartParser.part(head)))
                    return at
                }
            }
        }
        return at
    }

    /// The body (or preamble) scan: data up to the delimiter, holding a possible delimiter start.
    private mutating func scan(_ input: UnsafeRawBufferPointer, emitData: (Event) -> Void) -> (taken: Int, found: Bool) {
        var at = 0
        // A delimiter begun in the last input: does this one go on with it?
        while !carry.isEmpty {
            let need = delimiter.count - carry.count
            let n = min(need, input.count - at)
            var matches = true
            for i in 0..<n where input[at + i] != delimiter[carry.count + i] { matches = false; break }
            if matches {
                if n == need {
                    carry = []
                    return (at + n, true)
                }
                carry += input[at..<(at + n)]
                return (at + n, false)
            }
            // Not the delimiter: its first byte is data; what follows may still begin one.
            emitData(.carried([carry.removeFirst()]))
            while !carry.isEmpty, !delimiter.starts(with: carry) { emitData(.carried([carry.removeFirst()])) }
        }
        // Search this input.
        let d = delimiter
        var i = at
        let end = input.count
        while i < end {
            if input[i] == d[0] {
                let n = min(d.count, end - i)
                var matches = true
                for k in 1..<n where input[i + k] != d[k] { matches = false; break }
                if matches {
                    if i > at { emitData(.data(UnsafeRawBufferPointer(rebasing: input[at..<i]))) }
                    if n == d.count { return (i + n, true) }
                    carry = Array(input[i..<end])  // a delimiter may begin here
                    return (end, false)
                }
            }
            i += 1
        }
        if end > at { emitData(.data(UnsafeRawBufferPointer(rebasing: input[at..<end]))) }
        return (end, false)
    }

    /// A part's head: its `Content-Disposition` field name and file name.
    static func part(_ head: [UInt8]) throws(Failure) -> Part {
        let text = String(decoding: head, as: UTF8.self)
        var part = Part()
        for line in text.components(separatedBy: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            guard line[..<colon].trimmingCharacters(in: .whitespaces).lowercased() == "content-disposition" else { continue }
            for param in MultipartParser.parameters(String(line[line.index(after: colon)...])) {
                switch param.key.lowercased() {
                case "name": part.field = String(decoding: param.value, as: UTF8.self)
                case "filename": if part.filename == nil { part.filename = param.value }
                case "filename*":
                    // RFC 5987: charset'language'percent-encoded; it wins over `filename`.
                    let v = String(decoding: param.value, as: UTF8.self)
                    let pieces = v.split(separator: "'", maxSplits: 2, omittingEmptySubsequences: false)
                    if pieces.count == 3, let decoded = String(pieces[2]).removingPercentEncoding { part.filename = Array(decoded.utf8) }
                default: break
                }
            }
        }
        return part
    }

    /// `form-data; name="a"; filename="b c.txt"` → the parameters (quotes removed, `\"` and `\\` unescaped).
    static func parameters(_ value: String) -> [(key: String, value: [UInt8])] {
        var out: [(String, [UInt8])] = []
        let bytes = Array(value.utf8)
        var i = 0
        func skipSpaces() { while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 { i += 1 } }
        // The disposition type first.
        while i < bytes.count, bytes[i] != 0x3B { i += 1 }
        while i < bytes.count {
            i += 1  // ";"
            skipSpaces()
            var key: [UInt8] = []
            while i < bytes.count, bytes[i] != 0x3D, bytes[i] != 0x3B { key.append(bytes[i]); i += 1 }
            guard i < bytes.count, bytes[i] == 0x3D else { continue }
            i += 1
            skipSpaces()
            var v: [UInt8] = []
            if i < bytes.count, bytes[i] == 0x22 {
                i += 1
                while i < bytes.count, bytes[i] != 0x22 {
                    if bytes[i] == 0x5C, i + 1 < bytes.count { i += 1 }
                    v.append(bytes[i])
                    i += 1
                }
                i += 1  // the closing quote
                while i < bytes.count, bytes[i] != 0x3B { i += 1 }
            } else {
                while i < bytes.count, bytes[i] != 0x3B { v.append(bytes[i]); i += 1 }
                while let last = v.last, last == 0x20 || last == 0x09 { v.removeLast() }
            }
            out.append((String(decoding: key, as: UTF8.self).trimmingCharacters(in: .whitespaces), v))
        }
        return out
    }
}
