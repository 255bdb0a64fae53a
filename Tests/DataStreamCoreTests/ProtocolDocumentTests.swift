import Foundation
import Crypto
import Testing
@testable import DataStreamCore

/// The worked example of docs/PROTOCOL.md, byte for byte, from the encoders and the machine.
struct ProtocolDocumentTests {
    func hex(_ s: String) -> [UInt8] { [UInt8](hex: s.replacingOccurrences(of: " ", with: ""))! }

    @Test func workedExampleMatchesTheDocument() throws {
        let id = UploadID(bytes: Array(0..<16))
        let data = Array("hi\n".utf8)
        let digest = Array(SHA256.hash(data: data))
        #expect(Wire.hello() == hex("01 00 00 00 08 44 53 54 4d 01 00 00 00"))
        #expect(Wire.welcome(nonce: nil) == hex("02 00 00 00 02 01 00"))
        let header = FileHeader(uploadID: id, size: 3, digest: .sha256, name: "hi.txt")
        #expect(Wire.file(header) == hex("10 00 00 00 21 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 00 00 00 00 00 00 00 03 02 00 06 68 69 2e 74 78 74"))
        #expect(Wire.ready(uploadID: id, offset: 0) == hex("11 00 00 00 18 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 00 00 00 00 00 00 00 00"))
        #expect(Wire.end(digest: digest) == hex("12 00 00 00 20 98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4"))
        let result = UploadResult(uploadID: id, status: .stored, digestAlgorithm: .sha256, digest: digest, storedName: "hi.txt", message: "stored")
        #expect(Wire.result(result) == hex("13 00 00 00 43 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 00 02 20 98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4 00 06 68 69 2e 74 78 74 00 06 73 74 6f 72 65 64"))
        #expect(Wire.bye() == hex("1f 00 00 00 00"))

        // And the server machine walks through it producing exactly those replies.
        var m = ConnectionStateMachine(configuration: .init())
        var input = Wire.hello()
        var step = input.withUnsafeBytes { m.bytesReceived($0) }
        #expect(step.action == .send(Wire.welcome(nonce: nil)))
        input = Wire.file(header)
        step = input.withUnsafeBytes { m.bytesReceived($0) }
        #expect(step.action == .openUpload(header))
        #expect(m.uploadOpened(heldBytes: 0) == .send(Wire.ready(uploadID: id, offset: 0)))
        input = data + Wire.end(digest: digest)
        step = input.withUnsafeBytes { m.bytesReceived($0) }
        #expect(step.fileBytes == 3)
        step = input.withUnsafeBytes { m.bytesReceived(UnsafeRawBufferPointer(rebasing: $0[3...])) }
        #expect(step.action == .verifyUpload)
        #expect(m.digestComputed(digest) == .commitUpload)
        #expect(m.uploadCommitted(storedName: "hi.txt") == .send(Wire.result(result)))
    }

    @Test func seedExampleIsThreeThenTheBytes() {
        var m = ConnectionStateMachine(configuration: .init())
        let input = Array("3hi\n".utf8)
        var step = input.withUnsafeBytes { m.bytesReceived($0) }
        #expect(step.action == .startSeedUpload(declaredSize: 3))
        step = input.withUnsafeBytes { m.bytesReceived(UnsafeRawBufferPointer(rebasing: $0[1...])) }
        #expect(step == .init(consumed: 3, fileBytes: 3, action: .finishSeedUpload(filePrefix: [], size: 3)))
    }
}

/// The UDP worked example of docs/PROTOCOL.md §5.8, read from the document itself.
struct UDPProtocolDocumentTests {
    static let document: String = {
        let here = URL(fileURLWithPath: #filePath)
        let path = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("docs/PROTOCOL.md").path
        return (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }()

    func example(_ label: String) -> [UInt8]? {
        guard let line = Self.document.split(separator: "\n").first(where: { $0.hasPrefix(label + ":") }) else { return nil }
        return [UInt8](hex: line.dropFirst(label.count + 1).replacingOccurrences(of: " ", with: ""))
    }

    @Test func udpExamplesMatchTheEncoders() throws {
        let session: UInt64 = 0x0102_0304_0506_0708
        var data = [UInt8](repeating: 0, count: UDPWire.dataHeaderLength)
        data.withUnsafeMutableBytes { UDPWire.writeDataHeader(session: session, packet: 9, chunk: 3, into: $0.baseAddress!) }
        #expect(example("udp-data") == data + Array("hi".utf8))
        let status = UDPWire.Status(receiverTime: 1000, echoPacket: 9, echoDelay: 50, cumulative: 3, windowLimit: 67, receivedBytes: 2400,
                                    phase: .receiving, nacks: [(1, 1)], message: "")
        #expect(example("udp-status") == UDPWire.encode(status, session: session, packet: 2))
        let finish = UDPWire.Finish(chunkCount: 4, algorithm: .xxh3_128, digest: [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        #expect(example("udp-finish") == UDPWire.encode(finish, session: session, packet: 10))
    }
}
