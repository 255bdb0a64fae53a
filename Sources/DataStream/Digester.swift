import CXXHash
import Crypto
import DataStreamCore

/// An incremental file digest (XXH3-128 from libxxhash, SHA-256 from swift-crypto).
/// Owned by one upload (or one sender file); fed in file order.
package final class Digester {
    package let algorithm: DigestAlgorithm
    private var xxh: OpaquePointer?
    private var sha: SHA256?

    package init(_ algorithm: DigestAlgorithm) {
        self.algorithm = algorithm
        switch algorithm {
        case .xxh3_128:
            xxh = XXH3_createState()
            precondition(xxh != nil && XXH3_128bits_reset(xxh) == XXH_OK, "XXH3 state")
        case .sha256:
            sha = SHA256()
        }
    }

    deinit { if let xxh { XXH3_freeState(xxh) } }

    package func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        switch algorithm {
        case .xxh3_128: _ = XXH3_128bits_update(xxh, bytes.baseAddress, bytes.count)
        case .sha256: sha!.update(bufferPointer: bytes)
        }
    }

    /// The digest of everything fed so far (big-endian canonical form for XXH3-128).
    package func finish() -> [UInt8] {
        switch algorithm {
        case .xxh3_128:
            var canonical = XXH128_canonical_t()
            XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(xxh))
            return withUnsafeBytes(of: &canonical) { Array($0) }
        case .sha256:
            return Array(sha!.finalize())
        }
    }
}

/// One-shot digests with the same libraries and byte order as the server (for clients and tests).
public enum Digests {
    public static func compute(_ algorithm: DigestAlgorithm, _ bytes: [UInt8]) -> [UInt8] {
        let d = Digester(algorithm)
        bytes.withUnsafeBytes { d.update($0) }
        return d.finish()
    }
}
