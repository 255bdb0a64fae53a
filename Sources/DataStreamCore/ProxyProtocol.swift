/// The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`): a binary header a proxy sends
/// first on each connection, naming the client it came from. Only version 2 is accepted.
/// Layout (docs/PROTOCOL.md §9): a 12-byte signature; a byte of version (high 4 bits, 2) and
/// command (low 4 bits: 0 LOCAL, 1 PROXY); a byte of family (high: 1 IPv4, 2 IPv6) and
/// transport (low: 1 stream); a 16-bit big-endian length of the rest; then for IPv4 the source
/// and destination addresses (4 bytes each) and ports (2 each), for IPv6 the same with 16-byte
/// addresses; then TLVs, which are skipped.
public enum ProxyProtocol {
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// The signature, version and command, family and length: enough to know the whole length.
    public static let fixedLength = 16
    /// The longest header accepted (addresses and TLVs such as HAProxy's SSL details).
    public static let maxLength = 16 + 4096

    /// Where the proxy says a connection came from.
    public enum Header: Equatable, Sendable {
        /// The proxy's own connection (a health check): the peer is the proxy.
        case local
        /// A client's: its address (4 or 16 bytes) and port.
        case client(address: [UInt8], port: UInt16)
    }

    public enum Parsed: Equatable, Sendable {
        /// The header is `length` bytes long and not all here yet (`length` is
        /// `fixedLength` until those are).
        case needMore(length: Int)
        case header(Header, length: Int)
        case invalid(String)
    }

    /// Parses a header at the start of `bytes` (the first bytes of a connection).
    public static func parse(_ bytes: some RandomAccessCollection<UInt8>) -> Parsed {
        let b = Array(bytes.prefix(maxLength))
        let known = min(b.count, signature.count)
        guard b[0..<known].elementsEqual(signature[0..<known]) else { return .invalid("no PROXY protocol v2 signature") }
        guard b.count >= fixedLength else { return .needMore(length: fixedLength) }
        guard b[12] >> 4 == 2 else { return .invalid("PROXY protocol version \(b[12] >> 4) (only 2 is accepted)") }
        let command = b[12] & 0x0F
        let length = fixedLength + (Int(b[14]) << 8 | Int(b[15]))
        guard length <= maxLength else { return .invalid("PROXY header of \(length) bytes (at most \(maxLength))") }
        guard b.count >= length else { return .needMore(length: length) }
        switch command {
        case 0:
            return .header(.local, length: length)
        case 1:
            let family = b[13] >> 4, transport = b[13] & 0x0F
            guard transport == 1 else { return .invalid("PROXY header for transport \(transport) (only a stream, 1)") }
            let size: Int
            switch family {
            case 1: size = 4
            case 2: size = 16
            default: return .invalid("PROXY header for address family \(family) (only IPv4 or IPv6)")
            }
            guard length - fixedLength >= 2 * size + 4 else { return .invalid("PROXY header too short for its addresses") }
            let address = Array(b[fixedLength..<(fixedLength + size)])
            let portAt = fixedLength + 2 * size
            return .header(.client(address: address, port: UInt16(b[portAt]) << 8 | UInt16(b[portAt + 1])), length: length)
        default:
            return .invalid("PROXY command \(command)")
        }
    }

    /// Whether a connection's first bytes begin a PROXY header of either version (the v2
    /// signature, or v1's "PROXY "): from a peer not allowed to send one, it is refused.
    public static func looksLikeHeader(_ bytes: some Collection<UInt8>) -> Bool {
        let v1: [UInt8] = Array("PROXY ".utf8)
        let first = Array(bytes.prefix(signature.count))
        guard !first.isEmpty else { return false }
        return first.elementsEqual(signature.prefix(first.count)) && first.count >= 5
            || first.count >= v1.count && first.prefix(v1.count).elementsEqual(v1)
    }

    /// An address prefix (`10.0.0.0/8`, or one address): the proxies allowed to send headers.
    public struct Prefix: Equatable, Sendable {
        public let address: [UInt8]
        public let bits: Int
        public init(address: [UInt8], bits: Int) {
            self.address = address
            self.bits = max(0, min(bits, address.count * 8))
        }

        public func contains(_ other: [UInt8]) -> Bool {
            guard other.count == address.count else { return false }
            var left = bits
            for (a, b) in zip(address, other) where left > 0 {
                let mask: UInt8 = left >= 8 ? 0xFF : ~(0xFF >> UInt8(left))
                if a & mask != b & mask { return false }
                left -= 8
            }
            return true
        }
    }
}
