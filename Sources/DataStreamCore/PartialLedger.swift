/// What native partials the server holds, by upload id: whose they are (the client's host, as
/// recorded in the partial's metadata) and how many bytes each held when its last connection
/// ended. It decides whether a new partial may be made, so one address cannot fill the disk
/// or the partial folder with uploads it never finishes, nor can all addresses together.
///
/// A pure value, owned by the store and used on the loop thread. A partial counts from its
/// creation until it is stored or removed; its bytes are those it held when last let go (an
/// upload in progress holds its disk reservation meanwhile, see `DiskBudget`).
public struct PartialLedger: Sendable {
    public struct Limits: Sendable, Equatable {
        /// Partials one address may hold (0: no cap).
        public var perAddress: Int = 1_000
        /// Bytes one address's partials may hold (0: no cap).
        public var bytesPerAddress: UInt64 = 64 << 30
        /// Partials the server may hold (0: no cap).
        public var total: Int = 100_000
        /// Bytes all partials may hold (0: no cap).
        public var totalBytes: UInt64 = 0
        public init() {}
    }

    public enum Admission: Equatable, Sendable {
        case admit
        /// Refused: says which cap, in words a client can be told.
        case refuse(String)
    }

    private struct Entry: Sendable {
        var owner: [UInt8]
        var bytes: UInt64
    }

    private struct Holdings: Sendable {
        var count = 0
        var bytes: UInt64 = 0
    }

    public let limits: Limits
    private var entries: [UploadID: Entry] = [:]
    private var byOwner: [[UInt8]: Holdings] = [:]
    public private(set) var totalBytes: UInt64 = 0

    public init(limits: Limits) { self.limits = limits }

    public var count: Int { entries.count }

    /// Partials `owner` holds, and their bytes.
    public func holdings(of owner: [UInt8]) -> (count: Int, bytes: UInt64) {
        let h = byOwner[owner] ?? Holdings()
        return (h.count, h.bytes)
    }

    /// Whether `owner` may make a new partial now.
    public func admit(owner: [UInt8]) -> Admission {
        let h = byOwner[owner] ?? Holdings()
        if limits.perAddress > 0, h.count >= limits.perAddress {
            return .refuse("this address holds \(h.count) unfinished uploads, the most allowed (--max-partials-per-address); finish or resume them first")
        }
        if limits.bytesPerAddress > 0, h.bytes >= limits.bytesPerAddress {
            return .refuse("this address's unfinished uploads hold \(h.bytes) bytes, the most allowed (--max-partial-bytes-per-address); finish or resume them first")
        }
        if limits.total > 0, entries.count >= limits.total {
            return .refuse("the server holds \(entries.count) unfinished uploads, the most allowed (--max-partials)")
        }
        if limits.totalBytes > 0, totalBytes >= limits.totalBytes {
            return .refuse("unfinished uploads hold \(totalBytes) bytes, the most allowed (--max-partial-bytes)")
        }
        return .admit
    }

    /// A partial exists (made now, or found at start-up) for `owner`, holding `bytes`.
    public mutating func add(_ id: UploadID, owner: [UInt8], bytes: UInt64) {
        remove(id)
        entries[id] = Entry(owner: owner, bytes: bytes)
        byOwner[owner, default: Holdings()].count += 1
        byOwner[owner, default: Holdings()].bytes += bytes
        totalBytes += bytes
    }

    /// The partial's connection let it go holding `bytes`.
    public mutating func held(_ id: UploadID, bytes: UInt64) {
        guard let e = entries[id] else { return }
        byOwner[e.owner, default: Holdings()].bytes = byOwner[e.owner, default: Holdings()].bytes - e.bytes + bytes
        totalBytes = totalBytes - e.bytes + bytes
        entries[id]?.bytes = bytes
    }

    /// The partial is gone (stored, discarded or removed).
    public mutating func remove(_ id: UploadID) {
        guard let e = entries.removeValue(forKey: id) else { return }
        var h = byOwner[e.owner] ?? Holdings()
        h.count -= 1
        h.bytes -= e.bytes
        byOwner[e.owner] = h.count == 0 ? nil : h
        totalBytes -= e.bytes
    }
}

/// What becomes of a native partial whose digest did not match at the end of an upload.
public enum MismatchedPartial: Equatable, Sendable {
    /// Cut back to the bytes it held when this connection opened it: the bytes this connection
    /// added are the suspect ones, and whoever sent the earlier ones keeps them. So a client
    /// that only knows an upload's id cannot destroy what its owner holds by sending wrong bytes.
    case rollBack(to: UInt64)
    /// Deleted: this connection added nothing, so the bytes held before are wrong.
    case discard

    public static func decide(heldAtOpen: UInt64, heldNow: UInt64) -> MismatchedPartial {
        heldNow > heldAtOpen && heldAtOpen > 0 ? .rollBack(to: heldAtOpen) : .discard
    }

    /// Whether a partial stays for the client to resume.
    public var keepsPartial: Bool { self != .discard }
}
