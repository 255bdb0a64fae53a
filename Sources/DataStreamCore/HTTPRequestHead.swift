/// One HTTP/1.1 request's head as the parser delivers it: method, target, version, headers,
/// and what the parser concluded about the body and the connection. A plain value; the
/// parser (`HTTPParsing.HTTPRequestParser`) fills it, the machines read it.
public struct HTTPRequestHead: Hashable, Sendable {
    public var method: HTTPMethod
    /// The request target as sent (`/files/abc?x=1`), not decoded.
    public var target: String
    public var versionMajor: Int
    public var versionMinor: Int
    /// Header fields in order, names as sent.
    public var headers: [HTTPHeader]
    /// The body's length from `Content-Length`, when the request has one.
    public var contentLength: UInt64?
    /// The body comes in chunks (`Transfer-Encoding: chunked`).
    public var chunked: Bool
    /// The parser's reading of the version and `Connection` header: whether the connection
    /// stays open after the response.
    public var keepAlive: Bool
    /// The request asks to switch protocols (`Connection: Upgrade` with an `Upgrade` header).
    public var upgrade: Bool

    public init(method: HTTPMethod, target: String, versionMajor: Int = 1, versionMinor: Int = 1, headers: [HTTPHeader] = [],
                contentLength: UInt64? = nil, chunked: Bool = false, keepAlive: Bool = true, upgrade: Bool = false) {
        self.method = method
        self.target = target
        self.versionMajor = versionMajor
        self.versionMinor = versionMinor
        self.headers = headers
        self.contentLength = contentLength
        self.chunked = chunked
        self.keepAlive = keepAlive
        self.upgrade = upgrade
    }

    /// The first value of the header `name` (compared without case), if any.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    /// Whether the request has a body (a length above zero, or chunks).
    public var hasBody: Bool { chunked || (contentLength ?? 0) > 0 }

    /// Whether the client waits for `100 Continue` before sending its body.
    public var expectsContinue: Bool {
        (header("Expect")?.lowercased() == "100-continue") && versionMinor >= 1 && hasBody
    }

    /// The path part of the target (before `?`).
    public var path: Substring {
        target.firstIndex(of: "?").map { target[..<$0] } ?? target[...]
    }
}

/// A header field.
public struct HTTPHeader: Hashable, Sendable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// The request methods the receiver knows; anything else is `.other`.
public enum HTTPMethod: Hashable, Sendable {
    case get, head, post, put, patch, delete, options
    case other(String)

    public init(_ name: String) {
        switch name {
        case "GET": self = .get
        case "HEAD": self = .head
        case "POST": self = .post
        case "PUT": self = .put
        case "PATCH": self = .patch
        case "DELETE": self = .delete
        case "OPTIONS": self = .options
        default: self = .other(name)
        }
    }

    public var name: String {
        switch self {
        case .get: "GET"
        case .head: "HEAD"
        case .post: "POST"
        case .put: "PUT"
        case .patch: "PATCH"
        case .delete: "DELETE"
        case .options: "OPTIONS"
        case .other(let name): name
        }
    }
}
