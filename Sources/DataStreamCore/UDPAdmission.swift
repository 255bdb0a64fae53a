/// Who may start a UDP upload: the cookie handshake of native reliable UDP, the caps (native
/// sessions in all and per address, ring memory, seed sources) and the checks on what a START
/// or a seed size announces.
///
/// A value that touches no socket and no file: the UDP receiver asks it about every INIT,
/// START and seed size datagram and tells it when a session gives its slot or its ring back.
/// Time comes in as seconds of a monotonic clock (the cookies' lifetime). The disk budget is
/// not its business: the receiver reserves space once a session is admitted.
public struct UDPAdmission {
    public struct Limits: Sendable, Hashable {
        public var maxSessions = 256
        public var maxSessionsPerAddress = 32
        public var maxSeedSessions = 64
        public var maxSeedSessionsPerAddress = 16
        /// Ring bytes per native session (smaller for small files).
        public var windowBytes = 16 << 20
        /// Ring bytes of all native sessions together.
        public var memoryBudget = 512 << 20
        public var maxChunkSize = UDPWire.maximumChunkSize
        public var maxFileSize: UInt64 = 1 << 40
        /// Finished sessions linger to answer a repeated FINISH; at most this many times
        /// `maxSessions` sessions are held, lingering ones included.
        public var lingeringFactor = 8
        public var seedProtocolAllowed = true
        /// When set, a START must prove it knows the token.
        public var token: String?
        public init() {}
    }

    /// Why a seed source was turned away (seed UDP has no reply: these go to the log).
    public enum SeedRefusal: Hashable, Sendable, CustomStringConvertible {
        case shuttingDown
        case seedProtocolDisabled
        case tooManySeedSessions(Int)
        case tooManySeedSessionsFromAddress(Int)
        case fileTooLarge(size: UInt64, limit: UInt64)

        public var description: String {
            switch self {
            case .shuttingDown: return "the server is shutting down"
            case .seedProtocolDisabled: return ProtocolError.seedProtocolDisabled.description
            case .tooManySeedSessions(let n): return "\(n) seed sessions at once, the server's limit"
            case .tooManySeedSessionsFromAddress(let n): return "\(n) seed sessions at once from this address, its limit"
            case .fileTooLarge(let size, let limit): return ProtocolError.fileTooLarge(size: size, limit: limit).description
            }
        }
    }

    /// What a native session was granted.
    public struct Grant: Hashable, Sendable {
        /// The sanitised file name.
        public var name: String
        public var chunkSize: Int
        /// Chunks in the receive ring, and its bytes (counted until `ringReleased`).
        public var windowChunks: UInt32
        public var ringBytes: Int
    }

    /// The answer to a START.
    public enum Decision: Hashable, Sendable {
        /// Spoofed, stale or forged cookie: no reply, no state.
        case ignore
        /// Refused: the sender gets ABORT with this error.
        case refuse(ProtocolError)
        /// Admitted: the session holds a slot until `slotReleased`, a ring until `ringReleased`.
        case admit(Grant)
    }

    public let limits: Limits
    private let cookies: HandshakeCookie
    /// Unfinished native sessions per source host, and in all: what the caps count.
    private var perAddress: [[UInt8]: Int] = [:]
    private var activeNative = 0
    /// Native sessions held, lingering ones included.
    private var nativeSessions = 0
    private var ringBytesInUse = 0
    /// Seed sources open, in all and per host.
    private var seedSessions = 0
    private var seedPerAddress: [[UInt8]: Int] = [:]

    public init(limits: Limits, cookies: HandshakeCookie = HandshakeCookie()) {
        self.limits = limits
        self.cookies = cookies
    }

    /// Native uploads holding a slot (finished ones lingering do not).
    public var nativeUploadsInProgress: Int { activeNative }

    // MARK: - Seed

    /// A seed source on `host` announced `size` bytes. Admitting counts it against the caps
    /// until `seedEnded(host:)`.
    public mutating func seedStart(size: UInt64, host: [UInt8], draining: Bool) -> SeedRefusal? {
        if draining { return .shuttingDown }
        guard limits.seedProtocolAllowed else { return .seedProtocolDisabled }
        guard seedSessions < limits.maxSeedSessions else { return .tooManySeedSessions(seedSessions) }
        let fromHost = seedPerAddress[host, default: 0]
        guard fromHost < limits.maxSeedSessionsPerAddress else { return .tooManySeedSessionsFromAddress(fromHost) }
        guard size <= limits.maxFileSize else { return .fileTooLarge(size: size, limit: limits.maxFileSize) }
        seedSessions += 1
        seedPerAddress[host] = fromHost + 1
        return nil
    }

    /// An admitted seed source ended (stored, failed, or timed out). Once per source.
    public mutating func seedEnded(host: [UInt8]) {
        precondition(seedSessions > 0, "a seed source ended twice")
        seedSessions -= 1
        seedPerAddress[host, default: 1] -= 1
        if seedPerAddress[host] == 0 { seedPerAddress[host] = nil }
    }

    // MARK: - Native

    /// The stateless answer to INIT: the chunk size granted and the cookie for `source`.
    public func cookie(for initial: UDPWire.Initial, source: [UInt8], now: UInt32) -> UDPWire.Cookie {
        let chunk = UInt16(clamping: min(max(Int(initial.chunkSize), UDPWire.minimumChunkSize), limits.maxChunkSize))
        let cookie = cookies.issue(source: source, clientNonce: initial.clientNonce, chunkSize: chunk, now: now)
        return UDPWire.Cookie(clientNonce: initial.clientNonce, cookie: cookie, chunkSize: chunk, authenticationRequired: limits.token != nil)
    }

    /// Whether a START's cookie was issued to `source` (and is not stale): only then is the
    /// source verified, and a START for a session already open is answered again.
    public func cookieIsValid(_ start: UDPWire.Start, source: [UInt8], now: UInt32) -> Bool {
        cookies.verify(start.cookie, source: source, clientNonce: start.clientNonce, chunkSize: start.chunkSize, now: now)
    }

    /// A START with a valid cookie for a new session, from `host` (its address without port),
    /// naming the file `nameBytes`. Admitting counts the session against the caps.
    public mutating func start(_ start: UDPWire.Start, nameBytes: [UInt8], host: [UInt8], draining: Bool) -> Decision {
        if let token = limits.token,
           !HandshakeCookie.verifyAuthentication(start.mac, token: token, cookie: start.cookie, clientNonce: start.clientNonce) {
            return .refuse(start.mac.isEmpty ? .authenticationRequired : .authenticationFailed)
        }
        let name: String
        do throws(ProtocolError) {
            name = try NamePolicy.sanitise(nameBytes)
        } catch {
            return .refuse(error)
        }
        guard start.file.size <= limits.maxFileSize else {
            return .refuse(.fileTooLarge(size: start.file.size, limit: limits.maxFileSize))
        }
        if draining { return .refuse(.shuttingDown) }
        let chunkSize = Int(start.chunkSize)
        guard chunkSize >= UDPWire.minimumChunkSize, chunkSize <= limits.maxChunkSize,
              start.file.size / UInt64(chunkSize) < UInt64(UInt32.max)
        else {
            return .refuse(.malformedFrame(type: UDPWire.Kind.start.rawValue, detail: "chunk size \(chunkSize) does not fit this file"))
        }
        guard activeNative < limits.maxSessions, nativeSessions < limits.lingeringFactor * limits.maxSessions else {
            return .refuse(.serverBusy(reason: "\(limits.maxSessions) UDP uploads at once, the server's limit"))
        }
        guard perAddress[host, default: 0] < limits.maxSessionsPerAddress else {
            return .refuse(.serverBusy(reason: "\(limits.maxSessionsPerAddress) UDP uploads at once from this address, its limit"))
        }
        let chunks = Int((start.file.size + UInt64(chunkSize) - 1) / UInt64(chunkSize)) + 1
        let windowChunks = UInt32(max(64, min(limits.windowBytes / chunkSize, chunks)))
        let ringBytes = Int(windowChunks) * chunkSize
        guard ringBytesInUse + ringBytes <= limits.memoryBudget else {
            return .refuse(.serverBusy(reason: "no UDP receive memory left for another upload (\(limits.memoryBudget) bytes in all)"))
        }
        perAddress[host, default: 0] += 1
        activeNative += 1
        nativeSessions += 1
        ringBytesInUse += ringBytes
        return .admit(Grant(name: name, chunkSize: chunkSize, windowChunks: windowChunks, ringBytes: ringBytes))
    }

    /// An admitted session finished or ended: it no longer counts against the caps. Once per
    /// session.
    public mutating func slotReleased(host: [UInt8]) {
        precondition(activeNative > 0, "a slot released twice")
        activeNative -= 1
        perAddress[host, default: 1] -= 1
        if perAddress[host] == 0 { perAddress[host] = nil }
    }

    /// An admitted session is gone (it no longer lingers either).
    public mutating func sessionRemoved() {
        nativeSessions -= 1
    }

    /// A session's ring memory was freed.
    public mutating func ringReleased(_ bytes: Int) {
        ringBytesInUse -= bytes
    }
}
