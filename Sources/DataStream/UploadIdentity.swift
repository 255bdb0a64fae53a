import Crypto
import DataStreamCore
import Glibc

/// The upload ids a sender gives its files. An id must be the same each time the same file is
/// sent (so a later run resumes, and a second send of a stored file is recognised), and must be
/// impossible for anyone else to compute: whoever knows an id can probe or disturb that upload.
/// So it is an HMAC-SHA-256 of the file's absolute path, size and modification time, keyed
/// with a random secret the sender keeps in its state directory (`sender.key`, 32 bytes, mode
/// 0600, made on first use).
///
/// Where the secret cannot be kept (no writable state directory), an `ephemeral` identity with
/// a secret for this process alone still gives unguessable ids, but a later run cannot resume.
public struct UploadIdentity: Sendable {
    private let secret: [UInt8]
    /// Whether the secret outlives this process.
    public let isPersistent: Bool

    /// Why the secret could not be kept.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let reason: String
        public var description: String { "cannot keep the sender's secret in \(path): \(reason)" }
    }

    /// The state directory: `$DATASTREAM_STATE_DIR`, else `$XDG_STATE_HOME/datastream`, else
    /// `$HOME/.local/state/datastream`.
    public static var defaultStateDirectory: String {
        if let d = getenv("DATASTREAM_STATE_DIR").map({ String(cString: $0) }), !d.isEmpty { return d }
        if let d = getenv("XDG_STATE_HOME").map({ String(cString: $0) }), !d.isEmpty { return d + "/datastream" }
        let home = getenv("HOME").map { String(cString: $0) } ?? "/tmp"
        return home + "/.local/state/datastream"
    }

    /// The identity of the default state directory, or an ephemeral one where it cannot be kept.
    public static let standard: UploadIdentity = (try? UploadIdentity(stateDirectory: defaultStateDirectory)) ?? .ephemeral()

    /// A secret for this process alone.
    public static func ephemeral() -> UploadIdentity {
        UploadIdentity(secret: (0..<32).map { _ in UInt8.random(in: 0...255) }, isPersistent: false)
    }

    private init(secret: [UInt8], isPersistent: Bool) {
        self.secret = secret
        self.isPersistent = isPersistent
    }

    /// The secret kept in `stateDirectory` (made, with the directory, if there is none).
    /// Blocking: called once when a sender is set up, before its loop runs.
    public init(stateDirectory: String) throws(Failure) {
        let path = stateDirectory + "/sender.key"
        var prefix = stateDirectory.hasPrefix("/") ? "" : "."
        for part in stateDirectory.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw Failure(path: stateDirectory, reason: String(cString: strerror(errno)))
            }
        }
        if let existing = Self.read(path) {
            self.init(secret: existing, isPersistent: true)
            return
        }
        // Made under a temporary name and linked into place, so two senders starting at once
        // agree on one secret and neither reads a half-written one.
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let temporary = "\(path).\(getpid()).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw Failure(path: stateDirectory, reason: String(cString: strerror(errno))) }
        let written = secret.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        defer { unlink(temporary) }
        guard written == secret.count, synced == 0 else { throw Failure(path: stateDirectory, reason: "cannot write \(temporary)") }
        if link(temporary, path) != 0 && errno != EEXIST {
            throw Failure(path: stateDirectory, reason: String(cString: strerror(errno)))
        }
        guard let kept = Self.read(path) else { throw Failure(path: stateDirectory, reason: "\(path) does not hold a secret") }
        self.init(secret: kept, isPersistent: true)
    }

    private static func read(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        return n == 32 ? Array(bytes.prefix(32)) : nil
    }

    /// The file's size and upload id, or nil if it is not a regular file (errno says why).
    public func identity(of path: String) -> (size: UInt64, id: UploadID)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        guard (st.st_mode & S_IFMT) == S_IFREG else { errno = 0; return nil }
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let absolute = realpath(path, &resolved) != nil ? String(decoding: resolved.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) : path
        let key = "\(absolute)\n\(st.st_size)\n\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
        let mac = HMAC<SHA256>.authenticationCode(for: Array(key.utf8), using: SymmetricKey(data: secret))
        return (UInt64(st.st_size), UploadID(bytes: Array(Array(mac).prefix(Wire.uploadIDLength))))
    }
}
