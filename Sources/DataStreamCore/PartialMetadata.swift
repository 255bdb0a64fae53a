/// What the server records beside a partial native upload (`<id>.meta`), so that it can be
/// resumed after a reconnect or a restart. A value with a line-based text encoding.
public struct PartialMetadata: Hashable, Sendable {
    /// What the client announced (with the sanitised name).
    public var header: FileHeader

    public init(_ header: FileHeader) { self.header = header }

    /// The encoded file: `datastream-partial 1`, then `id`, `size`, `digest`, `name` (hex of UTF-8) lines.
    public var encoded: [UInt8] {
        Array("datastream-partial 1\nid \(header.uploadID.hex)\nsize \(header.size)\ndigest \(header.digest.name)\nname \(Array(header.name.utf8).hexString)\n".utf8)
    }

    /// Parses `encoded`; nil for anything else.
    public init?(decoding bytes: [UInt8]) {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        var fields: [Substring: Substring] = [:]
        let lines = text.split(separator: "\n")
        guard lines.first == "datastream-partial 1" else { return nil }
        for line in lines.dropFirst() {
            guard let space = line.firstIndex(of: " ") else { return nil }
            fields[line[..<space]] = line[line.index(after: space)...]
        }
        guard let id = fields["id"].flatMap({ UploadID(hex: String($0)) }),
              let size = fields["size"].flatMap({ UInt64($0) }),
              let digest = fields["digest"].flatMap({ DigestAlgorithm(name: String($0)) }),
              let nameBytes = fields["name"].flatMap({ [UInt8](hex: String($0)) }),
              let name = String(validating: nameBytes, as: UTF8.self)
        else { return nil }
        self.init(FileHeader(uploadID: id, size: size, digest: digest, name: name))
    }
}
