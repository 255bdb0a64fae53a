/// One server-side WebSocket connection's frames: `WebSocketFrameParser` for what comes in,
/// the frames this side sends, and the closing handshake (RFC 6455 §5.5, §7). Pings are
/// answered; a client's close frame is answered with its code; a refused frame is answered
/// with a close frame carrying the refusal's code, and reading stops. No I/O: the driver feeds
/// it what it reads and writes what `takeOutput` returns.
///
/// A class so the driver's handler may queue messages while `feed` runs.
public final class WebSocketCodec {
    public enum Event: Equatable, Sendable {
        /// A whole text message (checked UTF-8).
        case text([UInt8])
        /// Binary payload, unmasked in place: these bytes of the input given to `feed`.
        case binary(Range<Int>)
        /// The client's close frame (its code, 1005 when it gave none); the answer is queued.
        case closeReceived(code: UInt16)
    }

    private var parser: WebSocketFrameParser
    private var output: [UInt8] = []
    /// The code of the close frame this side sent (1005: one without a code).
    public private(set) var closeCodeSent: UInt16?
    public private(set) var closeReceived = false
    /// A frame was refused (`refusal` says why); its close frame is queued.
    public private(set) var refusal: WebSocketFrameParser.Failure?

    public init(maxTextBytes: Int) {
        parser = WebSocketFrameParser(maxTextBytes: maxTextBytes)
    }

    /// Reads frames from the start of `input` (unmasking in place), calling `handler` for each
    /// event until it returns false (reading stops right after it) or the input is used up.
    /// Returns how many bytes it took (all of them once the input ended or was refused).
    public func feed(_ input: UnsafeMutableRawBufferPointer, _ handler: (Event) -> Bool) -> Int {
        guard isReading else { return input.count }
        do throws(WebSocketFrameParser.Failure) {
            return try parser.parse(input) { event in
                switch event {
                case .text(let t):
                    return handler(.text(t))
                case .binary(let r):
                    return handler(.binary(r))
                case .ping(let payload):
                    if closeCodeSent == nil { output += Self.frame(0xa, payload) }
                    return true
                case .pong:
                    return true
                case .close(let code, _):
                    closeReceived = true
                    if closeCodeSent == nil {
                        closeCodeSent = code
                        output += Self.frame(0x8, code == 1005 ? [] : [UInt8(code >> 8), UInt8(code & 0xff)])
                    }
                    return handler(.closeReceived(code: code))
                }
            }
        } catch {
            refusal = error
            close(code: error.code, reason: error.reason)
            return input.count
        }
    }

    /// Queues a text message (nothing once a close frame was sent).
    public func sendText(_ message: String) {
        guard closeCodeSent == nil else { return }
        output += Self.frame(0x1, Array(message.utf8))
    }

    /// Queues a close frame with `code` and a reason cut to fit a control frame; nothing more
    /// is sent after it.
    public func close(code: UInt16, reason: String) {
        guard closeCodeSent == nil else { return }
        closeCodeSent = code
        var bytes = Array(reason.utf8.prefix(123))
        while !bytes.isEmpty, String(validating: bytes, as: UTF8.self) == nil { bytes.removeLast() }
        output += Self.frame(0x8, [UInt8(code >> 8), UInt8(code & 0xff)] + bytes)
    }

    /// The bytes to write for everything queued so far.
    public func takeOutput() -> [UInt8] {
        defer { output.removeAll(keepingCapacity: true) }
        return output
    }

    /// Whether frames are still read: not after the client's close frame or a refusal.
    public var isReading: Bool { refusal == nil && !closeReceived }

    /// Nothing more to read or send: both close frames went, or a frame was refused.
    public var isFinished: Bool { refusal != nil || (closeReceived && closeCodeSent != nil) }

    /// A server frame: final, unmasked.
    static func frame(_ opcode: UInt8, _ payload: [UInt8]) -> [UInt8] {
        head(opcode, length: payload.count, masked: false) + payload
    }

    /// A final frame's head up to its mask key: the opcode, then the length in the shortest of
    /// its three forms, with the mask bit when `masked` (the key follows it).
    static func head(_ opcode: UInt8, length: Int, masked: Bool) -> [UInt8] {
        let maskBit: UInt8 = masked ? 0x80 : 0
        var out: [UInt8] = [0x80 | opcode]
        if length < 126 {
            out.append(maskBit | UInt8(length))
        } else if length <= 0xffff {
            out += [maskBit | 126, UInt8(length >> 8), UInt8(length & 0xff)]
        } else {
            out.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: length >> shift)) }
        }
        return out
    }
}
