/// The client side of WebSocket frames, for the load generator's `websocket` protocol: frame
/// heads for what a client sends (masked, as RFC 6455 requires, with the all-zero key so the
/// payload goes out as it is and costs the generator no work), and a reader for the small
/// unmasked frames a server sends back. Pure.
public enum WebSocketClientFrames {
    public static let binary: UInt8 = 0x2
    public static let text: UInt8 = 0x1
    public static let close: UInt8 = 0x8

    /// The head of a final, masked frame of `length` payload bytes; the payload follows as is.
    public static func head(opcode: UInt8, length: Int) -> [UInt8] {
        WebSocketCodec.head(opcode, length: length, masked: true) + [0, 0, 0, 0]
    }

    /// A whole masked text frame.
    public static func text(_ message: String) -> [UInt8] {
        let payload = Array(message.utf8)
        return head(opcode: text, length: payload.count) + payload
    }

    /// The server frame starting at `start` of `bytes`: its opcode, where its payload lies, and
    /// where the next frame starts; nil until the whole frame is there.
    public static func serverFrame(in bytes: [UInt8], at start: Int) -> (opcode: UInt8, payload: Range<Int>, next: Int)? {
        guard bytes.count >= start + 2 else { return nil }
        var length = Int(bytes[start + 1] & 0x7f)
        var at = start + 2
        if length == 126 {
            guard bytes.count >= at + 2 else { return nil }
            length = Int(bytes[at]) << 8 | Int(bytes[at + 1])
            at += 2
        } else if length == 127 {
            guard bytes.count >= at + 8 else { return nil }
            length = bytes[at..<(at + 8)].reduce(0) { $0 << 8 | Int($1) }
            at += 8
        }
        if bytes[start + 1] & 0x80 != 0 { at += 4 }  // servers do not mask; skip a key if one came
        guard length >= 0, bytes.count >= at + length else { return nil }
        return (bytes[start] & 0x0f, at..<(at + length), at + length)
    }
}
