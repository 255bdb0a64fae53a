/// What the server records beside a native partial (`ID.meta`), so the upload can be resumed
/// after a reconnect or a restart: the header the client announced.
public struct PartialMetadata: Hashable, Sendable {
    /// What the client announced (with the sanitised name).
    public var header: FileHeader
    /// The client's host (its address bytes), which the partial counts against
    /// (`PartialLedger`); empty when unknown (metadata written before it was recorded).
    public var owner: [UInt8]

    public init(_ header: FileHeader, owner: [UInt8] = []) {
        self.header = header
        self.owner = owner
    }

    /// The encoded file: `datastream-partial 1`, then `id`, `size`, `digest`, `name` (hex of
    /// UTF-8) lines, and an `owner` (hex) line when the owner is known.
    public var encoded: [UInt8] {
        Array(("datastream-partial 1\n" + Self.headerLines(header) + (owner.isEmpty ? "" : "owner \(owner.hexString)\n")).utf8)
    }

    /// Parses `encoded`; nil for anything else.
    public init?(decoding bytes: [UInt8]) {
        guard let fields = Self.fields(bytes, magic: "datastream-partial 1"), let header = Self.header(fields) else { return nil }
        self.init(header, owner: fields["owner"].flatMap { [UInt8](hex: String($0)) } ?? [])
    }

    static func headerLines(_ header: FileHeader) -> String {
        "id \(header.uploadID.hex)\nsize \(header.size)\ndigest \(header.digest.name)\nname \(Array(header.name.utf8).hexString)\n"
    }

    /// The `key value` lines after `magic`, or nil if the first line is not `magic` or a line has no space.
    static func fields(_ bytes: [UInt8], magic: Substring) -> [Substring: Substring]? {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        let lines = text.split(separator: "\n")
        guard lines.first == magic else { return nil }
        var fields: [Substring: Substring] = [:]
        for line in lines.dropFirst() {
            guard let space = line.firstIndex(of: " ") else { return nil }
            fields[line[..<space]] = line[line.index(after: space)...]
        }
        return fields
    }

    static func header(_ fields: [Substring: Substring]) -> FileHeader? {
        guard let id = fields["id"].flatMap({ UploadID(hex: String($0)) }),
              let size = fields["size"].flatMap({ UInt64($0) }),
              let digest = fields["digest"].flatMap({ DigestAlgorithm(name: String($0)) }),
              let name = fields["name"].flatMap(Self.utf8)
        else { return nil }
        return FileHeader(uploadID: id, size: size, digest: digest, name: name)
    }

    static func utf8(_ hex: Substring) -> String? {
        [UInt8](hex: String(hex)).flatMap { String(validating: $0, as: UTF8.self) }
    }
}

/// What the server records when it stores a native upload (`ID.done`, beside the partials):
/// the header, the name the file was stored under, and its digest. A client that announces the
/// same upload again (its RESULT was lost to a crash or a dropped connection, or it sends the
/// same file twice) is answered with that name instead of getting a second copy, as long as the
/// file under that name still has that size and digest. Kept as long as partials are
/// (`--partial-max-age`).
public struct UploadReceipt: Hashable, Sendable {
    /// What the client announced (with the sanitised name).
    public var header: FileHeader
    /// The name the file was stored under (`header.name`, or `name-1.ext`, ... if taken).
    public var storedName: String
    /// The server's digest of the stored bytes (`header.digest`'s algorithm).
    public var digest: [UInt8]

    public init(header: FileHeader, storedName: String, digest: [UInt8]) {
        self.header = header
        self.storedName = storedName
        self.digest = digest
    }

    /// The encoded file: `datastream-stored 1`, the header lines of `PartialMetadata`, then
    /// `stored` (hex of UTF-8) and `sum` (hex) lines.
    public var encoded: [UInt8] {
        Array(("datastream-stored 1\n" + PartialMetadata.headerLines(header)
            + "stored \(Array(storedName.utf8).hexString)\nsum \(digest.hexString)\n").utf8)
    }

    /// Parses `encoded`; nil for anything else.
    public init?(decoding bytes: [UInt8]) {
        guard let fields = PartialMetadata.fields(bytes, magic: "datastream-stored 1"),
              let header = PartialMetadata.header(fields),
              let stored = fields["stored"].flatMap(PartialMetadata.utf8), !stored.isEmpty,
              let digest = fields["sum"].flatMap({ [UInt8](hex: String($0)) }), !digest.isEmpty
        else { return nil }
        self.init(header: header, storedName: stored, digest: digest)
    }
}
