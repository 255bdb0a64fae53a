import DataStreamCore
import Testing

/// A client frame: masked (unless told otherwise), with the length in the short, 16-bit or
/// 64-bit form the payload needs.
func frame(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, masked: Bool = true, mask: [UInt8] = [0x37, 0xfa, 0x21, 0x3d]) -> [UInt8] {
    var out: [UInt8] = [(fin ? 0x80 : 0) | opcode]
    let m: UInt8 = masked ? 0x80 : 0
    if payload.count < 126 {
        out.append(m | UInt8(payload.count))
    } else if payload.count <= 0xffff {
        out += [m | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
    } else {
        out.append(m | 127)
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((UInt64(payload.count) >> UInt64(shift)) & 0xff)) }
    }
    if masked {
        out += mask
        out += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    } else {
        out += payload
    }
    return out
}

/// What the codec made of `input`, fed in pieces of `piece` bytes.
struct Fed {
    var texts: [String] = []
    var binary: [UInt8] = []
    var closes: [UInt16] = []
}

func feed(_ codec: WebSocketCodec, _ input: [UInt8], piece: Int = .max) -> Fed {
    var fed = Fed()
    var bytes = input
    var at = 0
    while at < bytes.count {
        let end = min(bytes.count, at + piece)
        let taken = bytes[at..<end].withUnsafeMutableBytes { chunk in
            codec.feed(chunk) { event in
                switch event {
                case .text(let t): fed.texts.append(String(decoding: t, as: UTF8.self))
                case .binary(let r): fed.binary += chunk[r]
                case .closeReceived(let code): fed.closes.append(code)
                }
                return true
            }
        }
        if taken == 0 { break }
        at += taken
    }
    return fed
}

/// The frames in the codec's output (server frames are not masked): (opcode, payload).
func frames(_ bytes: [UInt8]) -> [(UInt8, [UInt8])] {
    var out: [(UInt8, [UInt8])] = []
    var i = 0
    while i + 2 <= bytes.count {
        let opcode = bytes[i] & 0x0f
        var n = Int(bytes[i + 1] & 0x7f)
        i += 2
        if n == 126 { n = Int(bytes[i]) << 8 | Int(bytes[i + 1]); i += 2 } else if n == 127 {
            n = bytes[i..<(i + 8)].reduce(0) { $0 << 8 | Int($1) }; i += 8
        }
        out.append((opcode, Array(bytes[i..<(i + n)])))
        i += n
    }
    return out
}

func closeCode(_ payload: [UInt8]) -> UInt16 { UInt16(payload[0]) << 8 | UInt16(payload[1]) }

/// The codec over its frame parser, byte by byte against RFC 6455, in pieces of every size.
@Suite struct WebSocketCodecTests {
    @Test func textAndBinaryInPiecesOfEverySize() {
        let payload = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let input = frame(0x1, Array(#"{"type":"begin"}"#.utf8)) + frame(0x2, payload) + frame(0x2, [1, 2, 3], fin: false) + frame(0x0, [4])
        for piece in [1, 3, 100, 4096, .max] {
            let codec = WebSocketCodec(maxTextBytes: 1024)
            let fed = feed(codec, input, piece: piece)
            #expect(fed.texts == [#"{"type":"begin"}"#])
            #expect(fed.binary == payload + [1, 2, 3, 4])
            #expect(codec.isReading)
        }
    }

    @Test func fragmentedTextWithAPingBetween() {
        let codec = WebSocketCodec(maxTextBytes: 1024)
        let fed = feed(codec, frame(0x1, Array("hel".utf8), fin: false) + frame(0x9, Array("p".utf8)) + frame(0x0, Array("lo".utf8)))
        #expect(fed.texts == ["hello"])
        let out = frames(codec.takeOutput())
        #expect(out.count == 1 && out[0].0 == 0xa && out[0].1 == Array("p".utf8))  // the pong
    }

    @Test func sentTextIsAnUnmaskedFrame() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        codec.sendText("héllo")
        let out = codec.takeOutput()
        #expect(out[1] & 0x80 == 0)
        #expect(frames(out).map(\.0) == [0x1])
        #expect(frames(out).first?.1 == Array("héllo".utf8))
    }

    @Test func closeIsAnsweredAndFinishes() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        let fed = feed(codec, frame(0x8, [0x03, 0xe8] + Array("bye".utf8)))
        #expect(fed.closes == [1000])
        let out = frames(codec.takeOutput())
        #expect(out.map(\.0) == [0x8] && closeCode(out[0].1) == 1000)
        #expect(codec.isFinished)
    }

    @Test func anUnmaskedFrameIsAProtocolError() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        let fed = feed(codec, frame(0x2, [1, 2, 3], masked: false))
        #expect(fed.binary.isEmpty)
        let out = frames(codec.takeOutput())
        #expect(out.count == 1 && out[0].0 == 0x8 && closeCode(out[0].1) == 1002)
        #expect(codec.closeCodeSent == 1002)
        #expect(!codec.isReading)
    }

    @Test func anOversizedControlFrameIsAProtocolError() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        _ = feed(codec, frame(0x9, [UInt8](repeating: 0x61, count: 126)))
        #expect(frames(codec.takeOutput()).first.map { closeCode($0.1) } == 1002)
        #expect(codec.closeCodeSent == 1002)
        #expect(codec.refusal != nil && codec.isFinished)
        #expect(codec.takeOutput().isEmpty)
    }

    @Test func badUTF8InACloseReasonIs1007() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        let fed = feed(codec, frame(0x8, [0x03, 0xe8, 0xc3, 0x28]))
        #expect(fed.closes.isEmpty)
        let out = frames(codec.takeOutput())
        #expect(out.first.map { closeCode($0.1) } == 1007)
    }

    @Test func badUTF8InTextIs1007() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        let fed = feed(codec, frame(0x1, [0x61, 0xff]))
        #expect(fed.texts.isEmpty)
        #expect(frames(codec.takeOutput()).first.map { closeCode($0.1) } == 1007)
    }

    @Test func aLongTextMessageIs1009() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        let fed = feed(codec, frame(0x1, [UInt8](repeating: 0x61, count: 17)))
        #expect(fed.texts.isEmpty)
        #expect(frames(codec.takeOutput()).first.map { closeCode($0.1) } == 1009)
        #expect(!codec.isReading)
    }

    @Test func aFalseFromTheHandlerStopsRightAfterItsEvent() {
        let codec = WebSocketCodec(maxTextBytes: 64)
        var input = frame(0x1, Array("a".utf8)) + frame(0x2, [UInt8](repeating: 9, count: 20_000))
        var texts = 0
        let taken = input.withUnsafeMutableBytes { codec.feed($0) { event in
            if case .text = event { texts += 1; return false }
            return true
        } }
        #expect(texts == 1)
        #expect(taken == 7)  // the text frame's head (6) and payload (1), nothing more
        var binary: [UInt8] = []
        let rest = input[taken...].withUnsafeMutableBytes { chunk in codec.feed(chunk) { event in
            if case .binary(let r) = event { binary += chunk[r] }
            return true
        } }
        #expect(taken + rest == input.count)
        #expect(binary == [UInt8](repeating: 9, count: 20_000))
    }

    @Test func unmaskingIsRightAtEveryPhaseAndLength() {
        let mask: [UInt8] = [0xde, 0xad, 0xbe, 0xef]
        for length in [0, 1, 3, 7, 8, 9, 15, 16, 17, 63, 1000] {
            let payload = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 5) }
            for piece in [1, 2, 3, 5, 8, 13, .max] {
                let codec = WebSocketCodec(maxTextBytes: 16)
                #expect(feed(codec, frame(0x2, payload, mask: mask), piece: piece).binary == payload, "\(length) in \(piece)s")
            }
        }
    }

    @Test func messageOrderRulesAreProtocolErrors() {
        for input in [frame(0x0, [1]),                                        // a continuation without a message
                      frame(0x2, [1], fin: false) + frame(0x2, [2]),          // a message inside another
                      frame(0x8, [0x03]),                                     // a close frame of one byte
                      frame(0x8, [0x03, 0xed]),                               // close code 1005 may not be sent
                      [0xc2, 0x80, 1, 2, 3, 4],                               // a reserved bit
                      [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4]] {  // a length with its top bit set
            let codec = WebSocketCodec(maxTextBytes: 16)
            _ = feed(codec, input)
            #expect(codec.refusal?.code == 1002, "\(input)")
            #expect(frames(codec.takeOutput()).first.map { closeCode($0.1) } == 1002)
        }
    }

    @Test func nothingIsSentAfterOurCloseFrameButItsAnswerIsRead() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        codec.close(code: 1008, reason: "no")
        codec.sendText("late")
        _ = feed(codec, frame(0x9, [1]))  // a ping after our close: not answered
        #expect(frames(codec.takeOutput()).map(\.0) == [0x8])
        #expect(!codec.isFinished)
        #expect(feed(codec, frame(0x8, [])).closes == [1005])
        #expect(codec.isFinished)
        #expect(codec.takeOutput().isEmpty)
    }

    @Test func ourCloseFrameCarriesCodeAndReason() {
        let codec = WebSocketCodec(maxTextBytes: 16)
        codec.close(code: 1008, reason: String(repeating: "é", count: 100))
        let out = frames(codec.takeOutput())
        #expect(out.count == 1 && closeCode(out[0].1) == 1008)
        #expect(out[0].1.count <= 125)
        #expect(String(validating: out[0].1.dropFirst(2), as: UTF8.self) != nil)
        #expect(codec.closeCodeSent == 1008)
        #expect(codec.isReading)  // waits for the client's close
        _ = feed(codec, frame(0x8, [0x03, 0xf0]))
        #expect(codec.isFinished)
        #expect(codec.takeOutput().isEmpty)  // our close frame went already
    }
}

@Suite struct WebSocketCodecSingleMessageTests {
    @Test func oneTextMessageLeavesTheCodecReading() {
        let codec = WebSocketCodec(maxTextBytes: 1024)
        let fed = feed(codec, frame(0x1, Array(#"{"type":"begin","name":"x.bin","size":10}"#.utf8)))
        #expect(fed.texts.count == 1)
        #expect(codec.refusal == nil)
        #expect(codec.isReading)
        codec.sendText("hi")
        let fed2 = feed(codec, frame(0x1, Array("again".utf8)))
        #expect(fed2.texts == ["again"])
        #expect(codec.refusal == nil)
    }
}
