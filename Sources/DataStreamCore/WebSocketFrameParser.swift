/// Client frames of RFC 6455 as a server reads them: frame heads gathered across reads, payload
/// unmasked in place, eight bytes at a time, in the caller's buffer, messages checked as §5 and
/// §8 require. Binary payload is handed on as ranges of that buffer, so the bytes of an upload
/// are never copied; text and control payloads are gathered (text up to `maxTextBytes`).
///
/// What a server must refuse is a `Failure` with its close code: an unmasked frame, reserved
/// bits or opcodes, a fragmented or long control frame, a continuation without a message or a
/// message inside another, a close frame of one byte or with an invalid code (1002); text or a
/// close reason that is not UTF-8 (1007); a text message too long (1009). A pure value.
///
/// Debian's wslay did this before; it unmasks a byte at a time through a buffer of its own,
/// which was most of the receiver's CPU for large uploads (docs/DESIGN.md, "WebSocket").
public struct WebSocketFrameParser: Sendable {
    public enum Event: Equatable, Sendable {
        /// A whole text message, checked UTF-8.
        case text([UInt8])
        /// Binary payload, unmasked in place: these bytes of the input given to `parse`.
        case binary(Range<Int>)
        case ping([UInt8])
        case pong
        /// A close frame: its code (1005 when it has none) and reason. Nothing after it is read.
        case close(code: UInt16, reason: [UInt8])
    }

    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        /// The close code to answer with: 1002, 1007 or 1009.
        public var code: UInt16
        public var reason: String
        public var description: String { "\(reason) (\(code))" }
    }

    public let maxTextBytes: Int
    /// A frame head being gathered (at most 14 bytes).
    private var head: [UInt8] = []
    private var frame: Frame?
    /// The data message in progress (its first frame's opcode), for continuations.
    private var message: UInt8?
    private var text: [UInt8] = []
    private var control: [UInt8] = []
    /// A close frame or a failure ended the input.
    public private(set) var isFinished = false

    private struct Frame: Sendable {
        var opcode: UInt8
        var fin: Bool
        var mask: (UInt8, UInt8, UInt8, UInt8)
        var remaining: UInt64
        /// Payload bytes unmasked so far (the mask's phase).
        var done: UInt64 = 0
    }

    public init(maxTextBytes: Int) {
        self.maxTextBytes = maxTextBytes
        head.reserveCapacity(14)
    }

    /// Reads frames from the start of `input`, unmasking payload in place, and calls `handler`
    /// for each event until it returns false (reading stops right after that event), the input
    /// is used up, or a close frame ends it. Returns how many bytes it took.
    public mutating func parse(_ input: UnsafeMutableRawBufferPointer, _ handler: (Event) -> Bool) throws(Failure) -> Int {
        var at = 0
        while at < input.count, !isFinished {
            guard var f = frame else {
                // Between frames: a head (and, for an empty payload, the whole frame).
                guard try takeHead(input, &at) else { return at }
                if frame?.remaining == 0 {
                    let go = try finishFrame(handler)
                    if !go { return at }
                }
                continue
            }
            let n = Int(min(f.remaining, UInt64(input.count - at)))
            Self.unmask(UnsafeMutableRawBufferPointer(rebasing: input[at..<(at + n)]), f.mask, phase: Int(f.done & 3))
            let range = at..<(at + n)
            at += n
            f.remaining -= UInt64(n)
            f.done += UInt64(n)
            frame = f
            var go = true
            if f.opcode >= 0x8 {
                control += input[range]
            } else if message == 0x1 {
                text += input[range]
            } else {
                go = handler(.binary(range))
            }
            if f.remaining == 0 { go = try finishFrame(handler) && go }
            if !go { return at }
        }
        return at
    }

    /// Gathers a frame head from `input` at `at`; true once a frame has begun.
    private mutating func takeHead(_ input: UnsafeMutableRawBufferPointer, _ at: inout Int) throws(Failure) -> Bool {
        while head.count < 2, at < input.count { head.append(input[at]); at += 1 }
        guard head.count >= 2 else { return false }
        // What the first two bytes break is refused before the rest of the head is waited for.
        guard head[0] & 0x70 == 0 else { throw fail(1002, "reserved bits set (no extension was agreed)") }
        guard head[1] & 0x80 != 0 else { throw fail(1002, "a client frame must be masked") }
        let lengthCode = head[1] & 0x7f
        let needed = 2 + (lengthCode == 126 ? 2 : lengthCode == 127 ? 8 : 0) + 4
        while head.count < needed, at < input.count { head.append(input[at]); at += 1 }
        guard head.count == needed else { return false }
        defer { head.removeAll(keepingCapacity: true) }
        let fin = head[0] & 0x80 != 0
        let opcode = head[0] & 0x0f
        var length = UInt64(lengthCode)
        if lengthCode == 126 {
            length = UInt64(head[2]) << 8 | UInt64(head[3])
        } else if lengthCode == 127 {
            length = head[2..<10].reduce(0) { $0 << 8 | UInt64($1) }
            guard length >> 63 == 0 else { throw fail(1002, "a payload length with its top bit set") }
        }
        let m = head[(needed - 4)...]
        let mask = (m[m.startIndex], m[m.startIndex + 1], m[m.startIndex + 2], m[m.startIndex + 3])
        switch opcode {
        case 0x8, 0x9, 0xa:
            guard fin, length <= 125 else { throw fail(1002, "a control frame must be whole and at most 125 bytes") }
            control.removeAll(keepingCapacity: true)
        case 0x0:
            guard message != nil else { throw fail(1002, "a continuation frame without a message") }
        case 0x1, 0x2:
            guard message == nil else { throw fail(1002, "a new message inside an unfinished one") }
            message = opcode
            if opcode == 0x1 { text.removeAll(keepingCapacity: true) }
        default:
            throw fail(1002, "reserved opcode \(opcode)")
        }
        if message == 0x1, opcode < 0x8, UInt64(text.count) + length > UInt64(maxTextBytes) {
            throw fail(1009, "a text message longer than \(maxTextBytes) bytes")
        }
        frame = Frame(opcode: opcode, fin: fin, mask: mask, remaining: length)
        return true
    }

    /// The frame's payload is all in: control frames and finished messages become events.
    /// Returns the handler's answer (true when there was no event).
    private mutating func finishFrame(_ handler: (Event) -> Bool) throws(Failure) -> Bool {
        guard let f = frame else { return true }
        frame = nil
        switch f.opcode {
        case 0x9:
            return handler(.ping(control))
        case 0xa:
            return handler(.pong)
        case 0x8:
            isFinished = true
            guard control.count != 1 else { throw fail(1002, "a close frame of one byte") }
            guard control.count >= 2 else { return handler(.close(code: 1005, reason: [])) }
            let code = UInt16(control[0]) << 8 | UInt16(control[1])
            guard Self.isValidCloseCode(code) else { throw fail(1002, "close code \(code) may not be sent") }
            let reason = Array(control[2...])
            guard String(validating: reason, as: UTF8.self) != nil else { throw fail(1007, "a close reason that is not UTF-8") }
            return handler(.close(code: code, reason: reason))
        default:
            guard f.fin else { return true }
            let kind = message
            message = nil
            guard kind == 0x1 else { return true }
            guard String(validating: text, as: UTF8.self) != nil else { throw fail(1007, "a text message that is not UTF-8") }
            let whole = text
            text.removeAll(keepingCapacity: true)
            return handler(.text(whole))
        }
    }

    private mutating func fail(_ code: UInt16, _ reason: String) -> Failure {
        isFinished = true
        return Failure(code: code, reason: reason)
    }

    /// Codes a peer may put in a close frame (RFC 6455 §7.4).
    public static func isValidCloseCode(_ code: UInt16) -> Bool {
        ((1000...1011).contains(code) && code != 1004 && code != 1005 && code != 1006) || (3000...4999).contains(code)
    }

    /// XORs `bytes` with the mask, starting at `phase` in it: eight bytes at a time.
    static func unmask(_ bytes: UnsafeMutableRawBufferPointer, _ mask: (UInt8, UInt8, UInt8, UInt8), phase: Int) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let m = [mask.0, mask.1, mask.2, mask.3]
        var word: UInt64 = 0
        for k in 0..<8 { word |= UInt64(m[(phase + k) & 3]) << (8 * UInt64(k)) }  // little-endian byte order
        let n = bytes.count
        var i = 0
        while i + 8 <= n {
            let p = base + i
            p.storeBytes(of: p.loadUnaligned(as: UInt64.self) ^ word.littleEndian, as: UInt64.self)
            i += 8
        }
        while i < n {
            base.storeBytes(of: base.load(fromByteOffset: i, as: UInt8.self) ^ m[(phase + i) & 3], toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }
}
