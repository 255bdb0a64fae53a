import DataStreamCore
import Testing

/// PROXY protocol v2 headers (docs/PROTOCOL.md §9), byte by byte.
struct ProxyProtocolTests {
    /// A PROXY header for a TCP client at `address`:`port` (to 192.0.2.1:9000), with `tlv`.
    static func header(address: [UInt8], port: UInt16, command: UInt8 = 1, tlv: [UInt8] = []) -> [UInt8] {
        let family: UInt8 = address.count == 4 ? 0x11 : 0x21
        let destination = address.count == 4 ? [192, 0, 2, 1] : [UInt8](repeating: 0, count: 15) + [1]
        let body = address + destination + [UInt8(port >> 8), UInt8(port & 0xFF), 0x23, 0x28] + tlv
        return ProxyProtocol.signature + [0x20 | command, family, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    @Test func anIPv4HeaderNamesTheClientAndItsLength() {
        let h = Self.header(address: [203, 0, 113, 7], port: 5555)
        #expect(h.count == 28)
        #expect(ProxyProtocol.parse(h + Array("1234abcd".utf8)) == .header(.client(address: [203, 0, 113, 7], port: 5555), length: 28))
    }

    @Test func anIPv6HeaderWithTLVsSkipsThem() {
        let address: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [9]
        let h = Self.header(address: address, port: 443, tlv: [0x04, 0x00, 0x02, 0xAB, 0xCD])
        #expect(ProxyProtocol.parse(h) == .header(.client(address: address, port: 443), length: 16 + 36 + 5))
    }

    @Test func aHeaderInPiecesAsksForWhatIsMissing() {
        let h = Self.header(address: [10, 1, 2, 3], port: 80)
        for cut in 0..<h.count {
            let expected: ProxyProtocol.Parsed = cut < 16 ? .needMore(length: 16) : .needMore(length: h.count)
            #expect(ProxyProtocol.parse(h[0..<cut]) == expected, "cut at \(cut)")
        }
    }

    @Test func localIsTheProxyItself() {
        let h = ProxyProtocol.signature + [0x20, 0x00, 0x00, 0x00]
        #expect(ProxyProtocol.parse(h) == .header(.local, length: 16))
    }

    @Test func whatIsNotAVersion2StreamHeaderIsRefused() {
        var h = Self.header(address: [1, 2, 3, 4], port: 1)
        h[12] = 0x11  // version 1 in the binary form
        #expect(ProxyProtocol.parse(h) == .invalid("PROXY protocol version 1 (only 2 is accepted)"))
        h = Self.header(address: [1, 2, 3, 4], port: 1)
        h[13] = 0x12  // datagram
        #expect(ProxyProtocol.parse(h) == .invalid("PROXY header for transport 2 (only a stream, 1)"))
        h = Self.header(address: [1, 2, 3, 4], port: 1)
        h[13] = 0x31  // a Unix socket
        #expect(ProxyProtocol.parse(h) == .invalid("PROXY header for address family 3 (only IPv4 or IPv6)"))
        h = Self.header(address: [1, 2, 3, 4], port: 1)
        h[12] = 0x2F
        #expect(ProxyProtocol.parse(h) == .invalid("PROXY command 15"))
        #expect(ProxyProtocol.parse(ProxyProtocol.signature + [0x21, 0x11, 0xFF, 0xFF]) == .invalid("PROXY header of 65551 bytes (at most 4112)"))
        #expect(ProxyProtocol.parse(ProxyProtocol.signature + [0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]) == .invalid("PROXY header too short for its addresses"))
        #expect(ProxyProtocol.parse(Array("1000".utf8)) == .invalid("no PROXY protocol v2 signature"))
        #expect(ProxyProtocol.parse(Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)) == .invalid("no PROXY protocol v2 signature"))
    }

    @Test func headersOfEitherVersionAreRecognisedAndUploadsAreNot() {
        #expect(ProxyProtocol.looksLikeHeader(Self.header(address: [1, 2, 3, 4], port: 1)))
        #expect(ProxyProtocol.looksLikeHeader(ProxyProtocol.signature.prefix(6)))
        #expect(ProxyProtocol.looksLikeHeader(Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)))
        for upload in ["1000xxxx", "PUT /a HTTP/1.1\r\n", "\r\n", "PROX"] {
            #expect(!ProxyProtocol.looksLikeHeader(Array(upload.utf8)), "\(upload)")
        }
        #expect(!ProxyProtocol.looksLikeHeader([0x44, 0x53, 0x54, 0x52]))  // a native HELLO's start
    }

    @Test func prefixesMatchByTheirBits() {
        let ten = ProxyProtocol.Prefix(address: [10, 0, 0, 0], bits: 8)
        #expect(ten.contains([10, 200, 3, 4]) && !ten.contains([11, 0, 0, 1]))
        let one = ProxyProtocol.Prefix(address: [127, 0, 0, 1], bits: 32)
        #expect(one.contains([127, 0, 0, 1]) && !one.contains([127, 0, 0, 2]))
        let odd = ProxyProtocol.Prefix(address: [192, 168, 4, 0], bits: 22)
        #expect(odd.contains([192, 168, 7, 255]) && !odd.contains([192, 168, 8, 0]))
        #expect(!one.contains([UInt8](repeating: 0, count: 16)), "IPv6 never matches an IPv4 prefix")
        #expect(ProxyProtocol.Prefix(address: [1, 2, 3, 4], bits: 0).contains([9, 9, 9, 9]))
    }
}
