import Crypto

/// The stateless handshake cookie of native UDP (docs/PROTOCOL.md §4.2): the receiver answers an
/// INIT with a cookie that binds the source address, the client's nonce and the chunk size to the
/// time it was issued, under a secret only the receiver knows. A START that returns a valid cookie
/// proves the source can receive at its address; until then the receiver keeps no state.
///
/// A value owned by the UDP driver; the secret lives as long as the process.
public struct HandshakeCookie: Sendable {
    private let secret: [UInt8]
    private var key: SymmetricKey { SymmetricKey(data: secret) }
    /// How long a cookie stays valid, in seconds.
    public let lifetime: UInt32

    public init(secret: [UInt8]? = nil, lifetime: UInt32 = 30) {
        if let secret {
            self.secret = secret
        } else {
            var g = SystemRandomNumberGenerator()
            self.secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }
        }
        self.lifetime = lifetime
    }

    /// The cookie for `source` (the address and port bytes) issued at `now` (seconds).
    public func issue(source: [UInt8], clientNonce: UInt64, chunkSize: UInt16, now: UInt32) -> [UInt8] {
        var out: [UInt8] = []
        out.appendBigEndian(now)
        out += mac(source: source, clientNonce: clientNonce, chunkSize: chunkSize, issued: now)
        return out
    }

    /// Whether `cookie` was issued by this receiver for these fields, no longer than `lifetime` ago.
    public func verify(_ cookie: [UInt8], source: [UInt8], clientNonce: UInt64, chunkSize: UInt16, now: UInt32) -> Bool {
        guard cookie.count == UDPWire.cookieLength else { return false }
        var issued: UInt32 = 0
        for b in cookie.prefix(4) { issued = issued << 8 | UInt32(b) }
        guard issued <= now &+ 1, now &- issued <= lifetime else { return false }
        let expected = mac(source: source, clientNonce: clientNonce, chunkSize: chunkSize, issued: issued)
        // Constant-time comparison.
        var difference: UInt8 = 0
        for (a, b) in zip(expected, cookie.dropFirst(4)) { difference |= a ^ b }
        return difference == 0
    }

    private func mac(source: [UInt8], clientNonce: UInt64, chunkSize: UInt16, issued: UInt32) -> [UInt8] {
        var message = UDPWire.cookieContext + source
        message.appendBigEndian(clientNonce)
        message.appendBigEndian(chunkSize)
        message.appendBigEndian(issued)
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: key).prefix(UDPWire.cookieLength - 4))
    }

    /// The client's proof of the token for one handshake: HMAC-SHA256(token, context || cookie || nonce).
    public static func authentication(token: String, cookie: [UInt8], clientNonce: UInt64) -> [UInt8] {
        var message = UDPWire.authContext + cookie
        message.appendBigEndian(clientNonce)
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: Array(token.utf8))))
    }

    /// Checks a client's proof in constant time.
    public static func verifyAuthentication(_ mac: [UInt8], token: String, cookie: [UInt8], clientNonce: UInt64) -> Bool {
        var message = UDPWire.authContext + cookie
        message.appendBigEndian(clientNonce)
        return HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: message, using: SymmetricKey(data: Array(token.utf8)))
    }
}
