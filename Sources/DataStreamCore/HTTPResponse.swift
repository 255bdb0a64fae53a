/// An HTTP/1.1 response and its bytes on the wire. Pure.
public struct HTTPResponse: Hashable, Sendable {
    public var status: Int
    public var headers: [HTTPHeader]
    public var body: [UInt8]

    public init(status: Int, headers: [HTTPHeader] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON body (`application/json`).
    public static func json(_ status: Int, _ object: [(String, JSONValue)], headers: [HTTPHeader] = []) -> HTTPResponse {
        HTTPResponse(status: status, headers: [HTTPHeader("Content-Type", "application/json")] + headers,
                     body: Array((JSONValue.object(object).text + "\n").utf8))
    }

    /// An error: `{"error": message, "status": status}`.
    public static func error(_ status: Int, _ message: String, headers: [HTTPHeader] = []) -> HTTPResponse {
        json(status, [("error", .string(message)), ("status", .number(UInt64(status)))], headers: headers)
    }

    /// The response with one more header.
    public func adding(_ header: HTTPHeader) -> HTTPResponse {
        var r = self
        r.headers.append(header)
        return r
    }

    /// A plain-text body.
    public static func text(_ status: Int, _ text: String, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: [HTTPHeader("Content-Type", contentType)], body: Array(text.utf8))
    }

    /// The interim answer to `Expect: 100-continue`.
    public static let continueBytes: [UInt8] = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)

    /// The status line, the headers (with `Content-Length`, and `Connection: close` when the
    /// connection ends after it) and the body, unless `headOnly` (a HEAD request).
    public func encoded(close: Bool, headOnly: Bool = false) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(HTTPResponse.reason(status))\r\n"
        for h in headers { text += "\(h.name): \(h.value)\r\n" }
        text += "Content-Length: \(body.count)\r\n"
        if close { text += "Connection: close\r\n" }
        text += "\r\n"
        var out = Array(text.utf8)
        if !headOnly { out += body }
        return out
    }

    /// The reason phrase of the statuses this server sends.
    public static func reason(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 406: "Not Acceptable"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 411: "Length Required"
        case 412: "Precondition Failed"
        case 413: "Content Too Large"
        case 415: "Unsupported Media Type"
        case 423: "Locked"
        case 426: "Upgrade Required"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        case 507: "Insufficient Storage"
        default: "Status"
        }
    }
}

/// The little JSON the HTTP routes write (responses, hook input). Pure.
public indirect enum JSONValue: Hashable, Sendable {
    case string(String)
    case number(UInt64)
    case double(Double)
    case bool(Bool)
    case null
    case object([(String, JSONValue)])
    case array([JSONValue])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.text == b.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }

    public var text: String {
        switch self {
        case .string(let s): return JSONValue.quote(s)
        case .number(let n): return "\(n)"
        case .double(let d): return d.isFinite ? "\(d)" : "null"
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .object(let fields): return "{" + fields.map { "\(JSONValue.quote($0.0)):\($0.1.text)" }.joined(separator: ",") + "}"
        case .array(let items): return "[" + items.map(\.text).joined(separator: ",") + "]"
        }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 || u.value == 0x2028 || u.value == 0x2029 {
                    out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
