/// The native protocol v1 wire format (normative text: docs/PROTOCOL.md): frame types,
/// encoders for every frame and decoders for their payloads. Pure functions on bytes.
public enum Wire {
    /// Payload of HELLO starts with these bytes: "DSTM".
    public static let magic: [UInt8] = [0x44, 0x53, 0x54, 0x4D]
    /// The protocol version this build speaks.
    public static let version: UInt8 = 1
    /// Bytes of a frame header: type (1) and payload length (4, big-endian).
    public static let headerLength = 5
    /// The largest control-frame payload a peer may send.
    public static let maxControlPayload: UInt32 = 65_536
    /// Bytes of a server nonce.
    public static let nonceLength = 32
    /// Bytes of an upload id.
    public static let uploadIDLength = 16
    /// The context string mixed into the authentication HMAC.
    public static let authContext: [UInt8] = Array("datastream-v1-auth".utf8)

    /// Frame type numbers. None is an ASCII digit, so the first byte tells the protocols apart.
    public enum FrameType: UInt8, Sendable {
        case hello = 0x01, welcome = 0x02, auth = 0x03, authOK = 0x04
        case file = 0x10, ready = 0x11, end = 0x12, result = 0x13
        case bye = 0x1F
        case error = 0x7F
    }

    /// Status numbers of a RESULT frame.
    public enum ResultStatus: UInt8, Sendable {
        case stored = 0, digestMismatch = 1, storageFailed = 2, rejected = 3
    }

    // MARK: encoding

    static func frame(_ type: FrameType, _ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(headerLength + payload.count)
        out.append(type.rawValue)
        out.appendBigEndian(UInt32(payload.count))
        out.append(contentsOf: payload)
        return out
    }

    /// HELLO's payload in version 1: magic, version, flags, reserved.
    public static let helloLength = 8

    public static func hello(flags: UInt8 = 0) -> [UInt8] {
        frame(.hello, magic + [version, flags, 0, 0])
    }

    public static func welcome(nonce: [UInt8]?) -> [UInt8] {
        var p: [UInt8] = [version, nonce == nil ? 0 : 1]
        if let nonce { p += nonce }
        return frame(.welcome, p)
    }

    public static func auth(mac: [UInt8]) -> [UInt8] { frame(.auth, mac) }
    public static func authOK() -> [UInt8] { frame(.authOK, []) }

    public static func file(_ header: FileHeader) -> [UInt8] {
        var p: [UInt8] = header.uploadID.bytes
        p.appendBigEndian(header.size)
        p.append(header.digest.rawValue)
        let name = Array(header.name.utf8)
        p.appendBigEndian(UInt16(truncatingIfNeeded: name.count))
        p += name
        return frame(.file, p)
    }

    public static func ready(uploadID: UploadID, offset: UInt64) -> [UInt8] {
        var p = uploadID.bytes
        p.appendBigEndian(offset)
        return frame(.ready, p)
    }

    public static func end(digest: [UInt8]) -> [UInt8] { frame(.end, digest) }
    public static func bye() -> [UInt8] { frame(.bye, []) }

    public static func result(_ r: UploadResult) -> [UInt8] {
        var p = r.uploadID.bytes
        p.append(r.status.rawValue)
        p.append(r.digestAlgorithm.rawValue)
        p.append(UInt8(r.digest.count))
        p += r.digest
        let name = Array(r.storedName.utf8.prefix(Int(UInt16.max)))
        p.appendBigEndian(UInt16(name.count))
        p += name
        let message = Array(r.message.utf8.prefix(1024))
        p.appendBigEndian(UInt16(message.count))
        p += message
        return frame(.result, p)
    }

    public static func error(_ e: ProtocolError) -> [UInt8] {
        var p: [UInt8] = []
        p.appendBigEndian(e.code)
        let message = Array(e.description.utf8.prefix(1024))
        p.appendBigEndian(UInt16(message.count))
        p += message
        return frame(.error, p)
    }

    // MARK: decoding payloads

    public static func decodeFile(_ p: ArraySlice<UInt8>) throws(ProtocolError) -> (UploadID, UInt64, UInt8, [UInt8]) {
        var r = ByteReader(p)
        guard let id = r.bytes(uploadIDLength), let size = r.u64(), let algo = r.u8(), let nameLength = r.u16(),
              let name = r.bytes(Int(nameLength)), r.isAtEnd
        else { throw .malformedFrame(type: FrameType.file.rawValue, detail: "FILE payload of \(p.count) bytes does not match its fields") }
        return (UploadID(bytes: id), size, algo, name)
    }

    public static func decodeWelcome(_ p: ArraySlice<UInt8>) throws(ProtocolError) -> (version: UInt8, nonce: [UInt8]?) {
        var r = ByteReader(p)
        guard let v = r.u8(), let mode = r.u8() else { throw .malformedFrame(type: FrameType.welcome.rawValue, detail: "short WELCOME") }
        if mode == 0 { return (v, nil) }
        guard let nonce = r.bytes(nonceLength), r.isAtEnd else { throw .malformedFrame(type: FrameType.welcome.rawValue, detail: "bad nonce") }
        return (v, nonce)
    }

    public static func decodeReady(_ p: ArraySlice<UInt8>) throws(ProtocolError) -> (UploadID, UInt64) {
        var r = ByteReader(p)
        guard let id = r.bytes(uploadIDLength), let offset = r.u64(), r.isAtEnd else {
            throw .malformedFrame(type: FrameType.ready.rawValue, detail: "READY payload of \(p.count) bytes")
        }
        return (UploadID(bytes: id), offset)
    }

    public static func decodeResult(_ p: ArraySlice<UInt8>) throws(ProtocolError) -> UploadResult {
        var r = ByteReader(p)
        guard let id = r.bytes(uploadIDLength), let s = r.u8(), let status = ResultStatus(rawValue: s),
              let a = r.u8(), let algo = DigestAlgorithm(rawValue: a), let dl = r.u8(), let digest = r.bytes(Int(dl)),
              let nl = r.u16(), let name = r.bytes(Int(nl)), let ml = r.u16(), let message = r.bytes(Int(ml)), r.isAtEnd
        else { throw .malformedFrame(type: FrameType.result.rawValue, detail: "RESULT payload of \(p.count) bytes") }
        return UploadResult(uploadID: UploadID(bytes: id), status: status, digestAlgorithm: algo, digest: digest,
                            storedName: String(decoding: name, as: UTF8.self), message: String(decoding: message, as: UTF8.self))
    }

    public static func decodeError(_ p: ArraySlice<UInt8>) -> (code: UInt16, message: String) {
        var r = ByteReader(p)
        guard let code = r.u16(), let ml = r.u16(), let m = r.bytes(Int(ml)) else { return (0, "malformed ERROR frame") }
        return (code, String(decoding: m, as: UTF8.self))
    }
}

/// A client-chosen 16-byte upload id: the key under which a partial upload can be resumed.
public struct UploadID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public init(bytes: [UInt8]) {
        precondition(bytes.count == Wire.uploadIDLength)
        self.bytes = bytes
    }
    /// A random id (for senders).
    public static func random() -> UploadID {
        var g = SystemRandomNumberGenerator()
        return UploadID(bytes: (0..<Wire.uploadIDLength).map { _ in UInt8.random(in: 0...255, using: &g) })
    }
    /// Lower-case hex, 32 characters: used in partial file names.
    public var hex: String { bytes.hexString }
    public init?(hex: String) {
        guard let b = [UInt8](hex: hex), b.count == Wire.uploadIDLength else { return nil }
        bytes = b
    }
    public var description: String { hex }
}

/// The digest algorithms of the native protocol.
public enum DigestAlgorithm: UInt8, Sendable, CaseIterable {
    /// XXH3, 128-bit (xxHash): the fast default.
    case xxh3_128 = 1
    /// SHA-256.
    case sha256 = 2

    public var digestLength: Int { self == .xxh3_128 ? 16 : 32 }
    public var name: String { self == .xxh3_128 ? "xxh3-128" : "sha256" }
    public init?(name: String) {
        guard let a = DigestAlgorithm.allCases.first(where: { $0.name == name }) else { return nil }
        self = a
    }
}

/// What a client announces for one file in a FILE frame.
public struct FileHeader: Hashable, Sendable {
    public var uploadID: UploadID
    public var size: UInt64
    public var digest: DigestAlgorithm
    /// The name as the client sent it (sanitised by the server before use).
    public var name: String
    public init(uploadID: UploadID, size: UInt64, digest: DigestAlgorithm, name: String) {
        self.uploadID = uploadID
        self.size = size
        self.digest = digest
        self.name = name
    }
}

/// The server's answer for one file (a RESULT frame).
public struct UploadResult: Hashable, Sendable {
    public var uploadID: UploadID
    public var status: Wire.ResultStatus
    public var digestAlgorithm: DigestAlgorithm
    /// The digest the server computed over the bytes it holds (empty if it has none).
    public var digest: [UInt8]
    /// The name the file was stored under, relative to the target directory (empty unless stored).
    public var storedName: String
    public var message: String
    public init(uploadID: UploadID, status: Wire.ResultStatus, digestAlgorithm: DigestAlgorithm, digest: [UInt8], storedName: String, message: String) {
        self.uploadID = uploadID
        self.status = status
        self.digestAlgorithm = digestAlgorithm
        self.digest = digest
        self.storedName = storedName
        self.message = message
    }
}

/// Reads big-endian fields from a byte slice; each accessor returns nil when too few bytes remain.
struct ByteReader {
    private var slice: ArraySlice<UInt8>
    init(_ slice: ArraySlice<UInt8>) { self.slice = slice }
    var isAtEnd: Bool { slice.isEmpty }
    mutating func u8() -> UInt8? { slice.popFirst() }
    mutating func u16() -> UInt16? { integer() }
    mutating func u32() -> UInt32? { integer() }
    mutating func u64() -> UInt64? { integer() }
    mutating func bytes(_ n: Int) -> [UInt8]? {
        guard slice.count >= n else { return nil }
        defer { slice = slice.dropFirst(n) }
        return Array(slice.prefix(n))
    }
    private mutating func integer<T: FixedWidthInteger>() -> T? {
        let n = MemoryLayout<T>.size
        guard slice.count >= n else { return nil }
        var v: T = 0
        for b in slice.prefix(n) { v = v << 8 | T(b) }
        slice = slice.dropFirst(n)
        return v
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ v: T) {
        var x = v.bigEndian
        Swift.withUnsafeBytes(of: &x) { append(contentsOf: $0) }
    }
    /// Lower-case hex.
    public var hexString: String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(count * 2)
        for b in self { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }
    /// Parses lower- or upper-case hex; nil if malformed.
    public init?(hex: String) {
        let u = Array(hex.utf8)
        guard u.count % 2 == 0 else { return nil }
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = v(u[i]), let l = v(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        self = out
    }
}
