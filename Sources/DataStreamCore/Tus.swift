import Foundation  // base64 only

/// tus 1.0 (https://tus.io/protocols/resumable-upload) at `/files/`, tusd's path: what a
/// request asks for, and the headers every answer carries. Core protocol, with the creation,
/// termination and expiration extensions. Pure.
public enum Tus {
    public static let version = "1.0.0"
    public static let extensions = "creation,termination,expiration"
    /// The collection uploads are created in; each upload is `/files/ID` (32 hex digits).
    public static let root = "/files/"
    /// The media type of a PATCH body.
    public static let patchType = "application/offset+octet-stream"

    /// What a request to `/files/` asks.
    public enum Request: Hashable, Sendable {
        /// OPTIONS: the server's version, extensions and size limit.
        case options
        /// POST /files/: a new upload of `length` bytes, to be stored as `name` (from the
        /// `filename` metadata; nil: a generated name).
        case create(length: UInt64, name: [UInt8]?)
        /// HEAD /files/ID: how many bytes the server holds.
        case status(UploadID)
        /// PATCH /files/ID: bytes from `offset` on.
        case append(UploadID, offset: UInt64)
        /// DELETE /files/ID: the upload is abandoned.
        case terminate(UploadID)
        /// Refused before anything happens.
        case refused(status: Int, message: String)
    }

    /// Whether `path` is tus's (the collection or an upload in it).
    public static func claims(_ path: Substring) -> Bool {
        path == "/files" || path.hasPrefix(root)
    }

    /// What the request asks for (call only when `claims` its path).
    public static func request(_ head: HTTPRequestHead) -> Request {
        let path = head.path
        let id: UploadID? = path.hasPrefix(root) ? UploadID(hex: String(path.dropFirst(root.count))) : nil
        let isCollection = path == "/files" || path == root
        if head.method == .options { return .options }
        guard head.header("Tus-Resumable") == version else {
            return .refused(status: 412, message: "Tus-Resumable: \(version) is required")
        }
        switch head.method {
        case .post where isCollection:
            if head.header("Upload-Defer-Length") != nil { return .refused(status: 400, message: "deferred lengths are not supported") }
            guard let text = head.header("Upload-Length"), let length = UInt64(text) else {
                return .refused(status: 400, message: "Upload-Length is required (a whole number of bytes)")
            }
            if head.hasBody { return .refused(status: 400, message: "creation with upload is not supported: send the bytes with PATCH") }
            guard let metadata = head.header("Upload-Metadata").map(Tus.metadata) ?? [:] else {
                return .refused(status: 400, message: "Upload-Metadata is not a list of keys with base64 values")
            }
            return .create(length: length, name: metadata["filename"] ?? metadata["name"])
        case .head, .patch, .delete:
            guard let id else { return .refused(status: 404, message: "no such upload") }
            switch head.method {
            case .head: return .status(id)
            case .delete: return .terminate(id)
            default:
                guard head.header("Content-Type")?.lowercased() == patchType else {
                    return .refused(status: 415, message: "a PATCH body must be \(patchType)")
                }
                guard let text = head.header("Upload-Offset"), let offset = UInt64(text) else {
                    return .refused(status: 400, message: "Upload-Offset is required (a whole number of bytes)")
                }
                return .append(id, offset: offset)
            }
        default:
            return .refused(status: id == nil && !isCollection ? 404 : 405, message: "\(head.method.name) is not allowed here")
        }
    }

    /// `Upload-Metadata`'s keys and decoded values (`filename d29ybGQ=,secret`); nil if malformed.
    public static func metadata(_ header: String) -> [String: [UInt8]]? {
        var out: [String: [UInt8]] = [:]
        for pair in header.split(separator: ",") {
            let parts = pair.trimmingCharacters(in: .whitespaces).split(separator: " ", omittingEmptySubsequences: true)
            guard let key = parts.first, parts.count <= 2 else { return nil }
            if parts.count == 2 {
                guard let data = Data(base64Encoded: String(parts[1])) else { return nil }
                out[String(key)] = Array(data)
            } else {
                out[String(key)] = []
            }
        }
        return out
    }

    /// The headers every tus answer carries.
    public static var resumable: HTTPHeader { HTTPHeader("Tus-Resumable", version) }

    /// The answer to OPTIONS.
    public static func options(maxSize: UInt64) -> HTTPResponse {
        HTTPResponse(status: 204, headers: [resumable, HTTPHeader("Tus-Version", version), HTTPHeader("Tus-Extension", extensions),
                                            HTTPHeader("Tus-Max-Size", "\(maxSize)")])
    }

    /// An error, with the tus headers.
    public static func error(_ status: Int, _ message: String) -> HTTPResponse {
        var r = HTTPResponse.error(status, message, headers: [resumable])
        if status == 412 { r.headers.append(HTTPHeader("Tus-Version", version)) }
        return r
    }

    /// `Upload-Expires`: an HTTP date (RFC 9110, IMF-fixdate) from seconds since the epoch.
    public static func httpDate(_ epochSeconds: Int) -> String {
        let t = NamePolicy.civil(epochSeconds)
        let days = epochSeconds >= 0 ? epochSeconds / 86_400 : (epochSeconds - 86_399) / 86_400
        let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][((days % 7) + 7) % 7]
        let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][t.month - 1]
        func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(weekday), \(two(t.day)) \(month) \(t.year) \(two(t.hour)):\(two(t.minute)):\(two(t.second)) GMT"
    }
}
