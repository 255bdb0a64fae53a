/// The wire formats of the two UDP protocols (normative text: docs/PROTOCOL.md §3 and §4).
///
/// - Seed UDP: a datagram of 1–20 ASCII digits (the size), data datagrams, a datagram `EOF`.
/// - Native reliable UDP ("DSU", version 1): every datagram starts with a 20-byte header —
///   magic `0xD5`, version, type, flags, session id (u64), packet number (u64), all big-endian.
///
/// Pure functions on bytes. Decoding works on raw buffers (the receive path must not allocate);
/// encoding of control datagrams returns arrays (a few per round trip, never one per datagram).
public enum UDPWire {
    /// First byte of every native datagram: not an ASCII digit and not `E`, so it never looks seed.
    public static let magic: UInt8 = 0xD5
    public static let version: UInt8 = 1
    public static let headerLength = 20
    /// Bytes before the payload of a DATA datagram: the header and the chunk index (u32).
    public static let dataHeaderLength = headerLength + 4
    /// An INIT datagram must be at least this long (padded), so the COOKIE reply is far smaller.
    public static let minimumInitLength = 1200
    /// Payload bytes per chunk: the default (safe on the internet) and the limits.
    public static let defaultChunkSize = 1200
    public static let minimumChunkSize = 512
    public static let maximumChunkSize = 16_384
    /// Bytes of a handshake cookie: issue time (u32 seconds) and a truncated HMAC (20 bytes).
    public static let cookieLength = 24
    /// The most NACK ranges one STATUS carries.
    public static let maxNackRanges = 64
    /// Context strings mixed into the HMACs.
    public static let cookieContext: [UInt8] = Array("datastream-udp-cookie".utf8)
    public static let authContext: [UInt8] = Array("datastream-udp-auth".utf8)

    /// Datagram types of the native protocol.
    public enum Kind: UInt8, Sendable {
        case initial = 0x01, cookie = 0x02, start = 0x03, accept = 0x04
        case data = 0x05, status = 0x06, finish = 0x07, abort = 0x08
    }

    /// The fixed header of a native datagram.
    public struct Header: Equatable, Sendable {
        public var kind: Kind
        public var flags: UInt8
        public var session: UInt64
        public var packet: UInt64
        public init(kind: Kind, flags: UInt8 = 0, session: UInt64, packet: UInt64) {
            self.kind = kind
            self.flags = flags
            self.session = session
            self.packet = packet
        }
    }

    /// What the first bytes of a datagram from a new source say it is.
    public enum Classification: Equatable, Sendable {
        case native(Header)
        /// 1–20 ASCII digits: the size datagram of a seed upload.
        case seedSize(UInt64)
        /// The seed `EOF` datagram.
        case seedEnd
        /// Anything else (seed data when a seed session exists for the source).
        case other
    }

    // MARK: - Decoding (raw buffers, no allocation)

    /// Reads the native header, or nil if the datagram is not a well-formed native datagram of this version.
    public static func header(_ d: UnsafeRawBufferPointer) -> Header? {
        guard d.count >= headerLength, d[0] == magic, d[1] == version, let kind = Kind(rawValue: d[2]) else { return nil }
        return Header(kind: kind, flags: d[3], session: d.loadBE(UInt64.self, at: 4), packet: d.loadBE(UInt64.self, at: 12))
    }

    public static func classify(_ d: UnsafeRawBufferPointer) -> Classification {
        if let h = header(d) { return .native(h) }
        if d.count == 3, d[0] == 0x45, d[1] == 0x4F, d[2] == 0x46 { return .seedEnd }
        if let size = seedSize(d) { return .seedSize(size) }
        return .other
    }

    /// The size of a seed size datagram: 1–20 ASCII digits that fit in 64 bits.
    public static func seedSize(_ d: UnsafeRawBufferPointer) -> UInt64? {
        guard (1...20).contains(d.count) else { return nil }
        var v: UInt64 = 0
        for b in d {
            guard b >= 0x30, b <= 0x39 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(b - 0x30))
            if o1 || o2 { return nil }
            v = s
        }
        return v
    }

    /// Whether a datagram is the seed `EOF` marker.
    public static func isSeedEnd(_ d: UnsafeRawBufferPointer) -> Bool {
        d.count == 3 && d[0] == 0x45 && d[1] == 0x4F && d[2] == 0x46
    }

    /// The chunk index of a DATA datagram (the payload follows at `dataHeaderLength`).
    public static func chunkIndex(_ d: UnsafeRawBufferPointer) -> UInt32? {
        d.count >= dataHeaderLength ? d.loadBE(UInt32.self, at: headerLength) : nil
    }

    // MARK: - Control messages

    /// INIT: a new client asks for a cookie. Padded to `minimumInitLength`.
    public struct Initial: Equatable, Sendable {
        public var clientNonce: UInt64
        public var chunkSize: UInt16
        public init(clientNonce: UInt64, chunkSize: UInt16) {
            self.clientNonce = clientNonce
            self.chunkSize = chunkSize
        }
    }

    /// COOKIE: the receiver's stateless answer to INIT.
    public struct Cookie: Equatable, Sendable {
        public var clientNonce: UInt64
        public var cookie: [UInt8]
        /// The chunk size the receiver grants (at most the one asked for).
        public var chunkSize: UInt16
        public var authenticationRequired: Bool
        public init(clientNonce: UInt64, cookie: [UInt8], chunkSize: UInt16, authenticationRequired: Bool) {
            self.clientNonce = clientNonce
            self.cookie = cookie
            self.chunkSize = chunkSize
            self.authenticationRequired = authenticationRequired
        }
    }

    /// START: the client returns the cookie and announces the file.
    public struct Start: Equatable, Sendable {
        public var clientNonce: UInt64
        public var cookie: [UInt8]
        public var chunkSize: UInt16
        public var file: FileHeader
        /// HMAC-SHA256(token, authContext || cookie || clientNonce) when the receiver asked for it.
        public var mac: [UInt8]
        public init(clientNonce: UInt64, cookie: [UInt8], chunkSize: UInt16, file: FileHeader, mac: [UInt8]) {
            self.clientNonce = clientNonce
            self.cookie = cookie
            self.chunkSize = chunkSize
            self.file = file
            self.mac = mac
        }
    }

    /// ACCEPT: the session exists; chunk 0 starts at `baseOffset` (bytes held from an earlier try).
    public struct Accept: Equatable, Sendable {
        public var clientNonce: UInt64
        public var baseOffset: UInt64
        /// Chunks the sender may have outstanding beyond the cumulative point.
        public var windowChunks: UInt32
        public init(clientNonce: UInt64, baseOffset: UInt64, windowChunks: UInt32) {
            self.clientNonce = clientNonce
            self.baseOffset = baseOffset
            self.windowChunks = windowChunks
        }
    }

    /// Where a session stands, in a STATUS.
    public enum SessionPhase: UInt8, Sendable {
        case receiving = 0, verifying = 1, stored = 2, failed = 3
    }

    /// STATUS: the receiver's periodic report (selective acknowledgement and rate feedback).
    public struct Status: Equatable, Sendable {
        /// Receiver clock, microseconds: the sender measures delivery rate against it.
        public var receiverTime: UInt64
        /// The highest packet number received, and how long (µs) it was held before this status.
        public var echoPacket: UInt64
        public var echoDelay: UInt32
        /// All chunks below this index have arrived.
        public var cumulative: UInt32
        /// The sender may send chunks below this index.
        public var windowLimit: UInt32
        /// Payload bytes received in this session, duplicates included.
        public var receivedBytes: UInt64
        public var phase: SessionPhase
        /// Missing chunks, lowest first: (first index, count).
        public var nacks: [(UInt32, UInt32)]
        /// When `phase` is stored or failed: the stored name or the reason.
        public var message: String
        public init(receiverTime: UInt64, echoPacket: UInt64, echoDelay: UInt32, cumulative: UInt32, windowLimit: UInt32, receivedBytes: UInt64, phase: SessionPhase, nacks: [(UInt32, UInt32)], message: String) {
            self.receiverTime = receiverTime
            self.echoPacket = echoPacket
            self.echoDelay = echoDelay
            self.cumulative = cumulative
            self.windowLimit = windowLimit
            self.receivedBytes = receivedBytes
            self.phase = phase
            self.nacks = nacks
            self.message = message
        }
        public static func == (a: Status, b: Status) -> Bool {
            a.receiverTime == b.receiverTime && a.echoPacket == b.echoPacket && a.echoDelay == b.echoDelay
                && a.cumulative == b.cumulative && a.windowLimit == b.windowLimit && a.receivedBytes == b.receivedBytes
                && a.phase == b.phase && a.message == b.message && a.nacks.elementsEqual(b.nacks, by: { $0 == $1 })
        }
    }

    /// FINISH: the sender has sent every chunk once; the receiver verifies against `digest`.
    public struct Finish: Equatable, Sendable {
        public var chunkCount: UInt32
        public var algorithm: DigestAlgorithm
        public var digest: [UInt8]
        public init(chunkCount: UInt32, algorithm: DigestAlgorithm, digest: [UInt8]) {
            self.chunkCount = chunkCount
            self.algorithm = algorithm
            self.digest = digest
        }
    }

    // MARK: encoding

    public static func encodeHeader(_ h: Header, into out: inout [UInt8]) {
        out.append(magic)
        out.append(version)
        out.append(h.kind.rawValue)
        out.append(h.flags)
        out.appendBigEndian(h.session)
        out.appendBigEndian(h.packet)
    }

    /// Writes a DATA header into `buffer` (at least `dataHeaderLength` bytes); the payload follows it.
    public static func writeDataHeader(session: UInt64, packet: UInt64, chunk: UInt32, into buffer: UnsafeMutableRawPointer) {
        buffer.storeBytes(of: magic, toByteOffset: 0, as: UInt8.self)
        buffer.storeBytes(of: version, toByteOffset: 1, as: UInt8.self)
        buffer.storeBytes(of: Kind.data.rawValue, toByteOffset: 2, as: UInt8.self)
        buffer.storeBytes(of: 0, toByteOffset: 3, as: UInt8.self)
        buffer.storeBytes(of: session.bigEndian, toByteOffset: 4, as: UInt64.self)
        buffer.storeBytes(of: packet.bigEndian, toByteOffset: 12, as: UInt64.self)
        buffer.storeBytes(of: chunk.bigEndian, toByteOffset: 20, as: UInt32.self)
    }

    public static func encode(_ m: Initial, packet: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(minimumInitLength)
        encodeHeader(Header(kind: .initial, session: 0, packet: packet), into: &out)
        out.appendBigEndian(m.clientNonce)
        out.appendBigEndian(m.chunkSize)
        out += [UInt8](repeating: 0, count: minimumInitLength - out.count)
        return out
    }

    public static func encode(_ m: Cookie, packet: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        encodeHeader(Header(kind: .cookie, session: 0, packet: packet), into: &out)
        out.appendBigEndian(m.clientNonce)
        out += m.cookie
        out.appendBigEndian(m.chunkSize)
        out.append(m.authenticationRequired ? 1 : 0)
        return out
    }

    public static func encode(_ m: Start, packet: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        encodeHeader(Header(kind: .start, session: 0, packet: packet), into: &out)
        out.appendBigEndian(m.clientNonce)
        out += m.cookie
        out.appendBigEndian(m.chunkSize)
        out += m.file.uploadID.bytes
        out.appendBigEndian(m.file.size)
        out.append(m.file.digest.rawValue)
        let name = Array(m.file.name.utf8.prefix(1024))
        out.appendBigEndian(UInt16(name.count))
        out += name
        out.append(UInt8(m.mac.count))
        out += m.mac
        return out
    }

    public static func encode(_ m: Accept, session: UInt64, packet: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        encodeHeader(Header(kind: .accept, session: session, packet: packet), into: &out)
        out.appendBigEndian(m.clientNonce)
        out.appendBigEndian(m.baseOffset)
        out.appendBigEndian(m.windowChunks)
        return out
    }

    public static func encode(_ m: Status, session: UInt64, packet: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + m.nacks.count * 8 + m.message.utf8.count)
        encodeHeader(Header(kind: .status, session: session, packet: packet), into: &out)
        out.appendBigEndian(m.receiverTime)
        out.appendBigEndian(m.echoPacket)
        out.appendBigEndian(m.echoDelay)
        out.appendBigEndian(m.cumulative)
        out.appendBigEndian(m.windowLimit)
        out.appendBigEndian(m.receivedBytes)
        out.append(m.phase.rawValue)
        let nacks = m.nacks.prefix(maxNackRanges)
        out.append(UInt8(nacks.count))
        for (first, count) in nacks {
            out.appendBigEndian(first)
            out.appendBigEndian(count)
        }
        let message = Array(m.message.utf8.prefix(512))
        out.appendBigEndian(UInt16(message.count))
        out += message
        return out
    }

    public static func encode(_ m: Finish, session: UInt64, packet: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        encodeHeader(Header(kind: .finish, session: session, packet: packet), into: &out)
        out.appendBigEndian(m.chunkCount)
        out.append(m.algorithm.rawValue)
        out.append(UInt8(m.digest.count))
        out += m.digest
        return out
    }

    public static func encodeAbort(code: UInt16, message: String, session: UInt64, packet: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        encodeHeader(Header(kind: .abort, session: session, packet: packet), into: &out)
        out.appendBigEndian(code)
        let m = Array(message.utf8.prefix(512))
        out.appendBigEndian(UInt16(m.count))
        out += m
        return out
    }

    // MARK: decoding control messages (rare: arrays are fine)

    /// The bytes after the header; empty (so every decoder says nil) when the datagram is
    /// shorter than a header. (Found by fuzzing: a short datagram used to trap here.)
    private static func body(_ d: UnsafeRawBufferPointer) -> ByteReader {
        guard d.count >= headerLength else { return ByteReader([][...]) }
        return ByteReader(Array(d)[headerLength...])
    }

    public static func decodeInitial(_ d: UnsafeRawBufferPointer) -> Initial? {
        guard d.count >= minimumInitLength else { return nil }
        var r = body(d)
        guard let nonce = r.u64(), let cs = r.u16() else { return nil }
        return Initial(clientNonce: nonce, chunkSize: cs)
    }

    public static func decodeCookie(_ d: UnsafeRawBufferPointer) -> Cookie? {
        var r = body(d)
        guard let nonce = r.u64(), let c = r.bytes(cookieLength), let cs = r.u16(), let a = r.u8(), r.isAtEnd else { return nil }
        return Cookie(clientNonce: nonce, cookie: c, chunkSize: cs, authenticationRequired: a != 0)
    }

    public static func decodeStart(_ d: UnsafeRawBufferPointer) -> Start? {
        var r = body(d)
        guard let nonce = r.u64(), let c = r.bytes(cookieLength), let cs = r.u16(), let id = r.bytes(Wire.uploadIDLength),
              let size = r.u64(), let a = r.u8(), let algo = DigestAlgorithm(rawValue: a), let nl = r.u16(),
              let name = r.bytes(Int(nl)), let ml = r.u8(), let mac = r.bytes(Int(ml)), r.isAtEnd
        else { return nil }
        let file = FileHeader(uploadID: UploadID(bytes: id), size: size, digest: algo, name: String(decoding: name, as: UTF8.self))
        return Start(clientNonce: nonce, cookie: c, chunkSize: cs, file: file, mac: mac)
    }

    /// The raw name bytes of a START (to validate UTF-8 and NUL before use).
    public static func startNameBytes(_ d: UnsafeRawBufferPointer) -> [UInt8]? {
        var r = body(d)
        guard r.bytes(8 + cookieLength + 2 + Wire.uploadIDLength + 8 + 1) != nil, let nl = r.u16(), let name = r.bytes(Int(nl)) else { return nil }
        return name
    }

    public static func decodeAccept(_ d: UnsafeRawBufferPointer) -> Accept? {
        var r = body(d)
        guard let nonce = r.u64(), let base = r.u64(), let w = r.u32(), r.isAtEnd else { return nil }
        return Accept(clientNonce: nonce, baseOffset: base, windowChunks: w)
    }

    public static func decodeStatus(_ d: UnsafeRawBufferPointer) -> Status? {
        var r = body(d)
        guard let t = r.u64(), let ep = r.u64(), let ed = r.u32(), let cum = r.u32(), let wl = r.u32(), let rb = r.u64(),
              let p = r.u8(), let phase = SessionPhase(rawValue: p), let n = r.u8(), Int(n) <= maxNackRanges
        else { return nil }
        var nacks: [(UInt32, UInt32)] = []
        for _ in 0..<n {
            guard let f = r.u32(), let c = r.u32() else { return nil }
            nacks.append((f, c))
        }
        guard let ml = r.u16(), let m = r.bytes(Int(ml)), r.isAtEnd else { return nil }
        return Status(receiverTime: t, echoPacket: ep, echoDelay: ed, cumulative: cum, windowLimit: wl, receivedBytes: rb,
                      phase: phase, nacks: nacks, message: String(decoding: m, as: UTF8.self))
    }

    public static func decodeFinish(_ d: UnsafeRawBufferPointer) -> Finish? {
        var r = body(d)
        guard let n = r.u32(), let a = r.u8(), let algo = DigestAlgorithm(rawValue: a), let dl = r.u8(),
              Int(dl) == algo.digestLength, let digest = r.bytes(Int(dl)), r.isAtEnd
        else { return nil }
        return Finish(chunkCount: n, algorithm: algo, digest: digest)
    }

    public static func decodeAbort(_ d: UnsafeRawBufferPointer) -> (code: UInt16, message: String)? {
        var r = body(d)
        guard let code = r.u16(), let ml = r.u16(), let m = r.bytes(Int(ml)) else { return nil }
        return (code, String(decoding: m, as: UTF8.self))
    }
}

extension UnsafeRawBufferPointer {
    /// A big-endian integer at `offset` (unaligned); the caller checked the length.
    @inline(__always)
    func loadBE<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(bigEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
