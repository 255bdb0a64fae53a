/// Why a connection or an upload failed, with the numbers that explain it.
///
/// Produced by the state machines; the drivers log it and (for the native protocol) send its
/// `code` in an ERROR frame. Plain data, no ownership.
public enum ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A frame whose layout is wrong (`detail` says which field).
    case malformedFrame(type: UInt8, detail: String)
    /// The HELLO frame had the wrong magic.
    case badMagic
    /// The client speaks a version this server does not.
    case unsupportedVersion(UInt8)
    /// A frame type that is not allowed in the current state.
    case unexpectedFrame(type: UInt8, state: String)
    /// A control frame longer than the limit.
    case frameTooLarge(length: UInt32, limit: UInt32)
    /// The server requires a token and the client did not authenticate.
    case authenticationRequired
    /// The client's HMAC did not match.
    case authenticationFailed
    /// A file name that is empty, not UTF-8, or too long.
    case invalidName(reason: String)
    /// An announced size above the limit.
    case fileTooLarge(size: UInt64, limit: UInt64)
    /// A digest algorithm number this server does not know.
    case unsupportedDigest(UInt8)
    /// Another connection is uploading with this id right now.
    case uploadBusy
    /// A resumed upload announced a different size, digest or name than its partial file.
    case resumeMismatch(detail: String)
    /// The client closed before the upload was complete.
    case unexpectedEndOfStream(received: UInt64, expected: UInt64)
    /// Seed protocol: the size field is not a size this server accepts.
    case invalidSeedSize(digits: String)
    /// Seed protocol: more bytes arrived than the declared size.
    case trailingBytes(declared: UInt64, received: UInt64)
    /// Writing, syncing or renaming failed on the server (for example disk full).
    case storageFailed(reason: String)
    /// The connection failed underneath (for example a reset).
    case connectionFailed(reason: String)
    /// No upload began (seed size field, or native FILE header) within the header timeout.
    case headerTimeout(seconds: Double)
    /// No byte arrived for the idle timeout while the server waited for the client.
    case idleTimeout(seconds: Double)
    /// The client's address already has the most connections allowed at once.
    case tooManyConnections(limit: Int)
    /// A seed-protocol upload on a listener where the seed protocols are off (a non-loopback
    /// address without `--allow-seed-protocol`: the seed protocols cannot authenticate).
    case seedProtocolDisabled
    /// The server is shutting down and takes no new upload (one in progress may finish).
    case shuttingDown
    /// The file does not fit: the disk is full (ENOSPC, EDQUOT), or an announced size is more
    /// than the free space left after the minimum kept free and the uploads in progress.
    case diskFull(reason: String)
    /// The server holds as many uploads as it allows (in all, from this address, or in receive
    /// memory): try again later.
    case serverBusy(reason: String)

    /// The number sent in an ERROR frame (see docs/PROTOCOL.md, "Error codes").
    public var code: UInt16 {
        switch self {
        case .malformedFrame: return 1
        case .badMagic: return 2
        case .unsupportedVersion: return 3
        case .unexpectedFrame: return 4
        case .frameTooLarge: return 5
        case .authenticationRequired: return 6
        case .authenticationFailed: return 7
        case .invalidName: return 8
        case .fileTooLarge: return 9
        case .unsupportedDigest: return 10
        case .uploadBusy: return 11
        case .resumeMismatch: return 12
        case .unexpectedEndOfStream: return 13
        case .invalidSeedSize: return 14
        case .trailingBytes: return 15
        case .storageFailed: return 16
        case .connectionFailed: return 17
        case .headerTimeout: return 18
        case .idleTimeout: return 19
        case .tooManyConnections: return 20
        case .seedProtocolDisabled: return 21
        case .shuttingDown: return 22
        case .diskFull: return 23
        case .serverBusy: return 24
        }
    }

    /// A short label of the kind of error with `code`, for metrics (`disk_full`); `other` for a
    /// code this build does not know.
    public static func label(code: UInt16) -> String {
        let labels = ["malformed_frame", "bad_magic", "unsupported_version", "unexpected_frame", "frame_too_large",
                      "authentication_required", "authentication_failed", "invalid_name", "file_too_large", "unsupported_digest",
                      "upload_busy", "resume_mismatch", "unexpected_end_of_stream", "invalid_seed_size", "trailing_bytes",
                      "storage_failed", "connection_failed", "header_timeout", "idle_timeout", "too_many_connections",
                      "seed_protocol_disabled", "shutting_down", "disk_full", "server_busy"]
        return code >= 1 && Int(code) <= labels.count ? labels[Int(code) - 1] : "other"
    }

    public var description: String {
        switch self {
        case .malformedFrame(let type, let detail): return "malformed frame 0x\(String(type, radix: 16)): \(detail)"
        case .badMagic: return "bad magic in HELLO"
        case .unsupportedVersion(let v): return "unsupported protocol version \(v); this server speaks version \(Wire.version)"
        case .unexpectedFrame(let type, let state): return "unexpected frame 0x\(String(type, radix: 16)) while \(state)"
        case .frameTooLarge(let length, let limit): return "frame of \(length) bytes exceeds the limit of \(limit)"
        case .authenticationRequired: return "authentication required"
        case .authenticationFailed: return "authentication failed"
        case .invalidName(let reason): return "invalid file name: \(reason)"
        case .fileTooLarge(let size, let limit): return "file of \(size) bytes exceeds the limit of \(limit)"
        case .unsupportedDigest(let a): return "unsupported digest algorithm \(a)"
        case .uploadBusy: return "upload id is in use by another connection"
        case .resumeMismatch(let detail): return "resume does not match the partial upload: \(detail)"
        case .unexpectedEndOfStream(let received, let expected): return "connection closed after \(received) of \(expected) bytes"
        case .invalidSeedSize(let digits): return "invalid seed size field \"\(digits)\""
        case .trailingBytes(let declared, let received): return "received \(received) bytes, more than the declared \(declared)"
        case .storageFailed(let reason): return "storage failed: \(reason)"
        case .connectionFailed(let reason): return "connection failed: \(reason)"
        case .headerTimeout(let s): return "no upload began within the header timeout (\(s) s)"
        case .idleTimeout(let s): return "no bytes for the idle timeout (\(s) s)"
        case .tooManyConnections(let limit): return "too many connections from this address (limit \(limit))"
        case .seedProtocolDisabled: return "the seed protocol is off on this address (it cannot authenticate; --allow-seed-protocol turns it on)"
        case .shuttingDown: return "the server is shutting down; try again later (a native upload can resume)"
        case .diskFull(let reason): return "disk full: \(reason)"
        case .serverBusy(let reason): return "server busy: \(reason)"
        }
    }
}
