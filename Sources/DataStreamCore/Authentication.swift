import Crypto

/// Token authentication by challenge and response: the client proves it knows the token by
/// HMAC-SHA256 over the server's nonce; the token never crosses the wire. Pure functions.
public enum Authentication {
    /// A fresh random nonce for one connection.
    public static func nonce() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<Wire.nonceLength).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    /// HMAC-SHA256(key: token, message: "datastream-v1-auth" || nonce).
    public static func response(token: String, nonce: [UInt8]) -> [UInt8] {
        let key = SymmetricKey(data: Array(token.utf8))
        return Array(HMAC<SHA256>.authenticationCode(for: Wire.authContext + nonce, using: key))
    }

    /// Checks a client's response in constant time.
    public static func verify(token: String, nonce: [UInt8], response: [UInt8]) -> Bool {
        let key = SymmetricKey(data: Array(token.utf8))
        return HMAC<SHA256>.isValidAuthenticationCode(response, authenticating: Wire.authContext + nonce, using: key)
    }

    /// Whether `a` and `b` are equal, in a time that depends only on their lengths.
    public static func equalInConstantTime(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in a.indices { difference |= a[i] ^ b[i] }
        return difference == 0
    }
}
