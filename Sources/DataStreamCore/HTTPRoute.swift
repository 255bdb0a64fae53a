/// Which of the receiver's HTTP routes a request is for. Pure.
///
/// - `PUT /NAME`: store the body as NAME (`PUT /` without a name: a generated name);
/// - `POST /`: store the files of a `multipart/form-data` body (an HTML form, `curl -F`);
/// - `GET /`: the upload page (its uploads go over the WebSocket at `/ws`);
/// - `GET /healthz`, `GET /readyz`, `GET /metrics` (and HEAD of each).
public enum HTTPRoute: Hashable, Sendable {
    /// Store the body; `name` is the decoded last part of the path (nil when empty).
    case put(name: [UInt8]?)
    /// `POST /`: store the files of a `multipart/form-data` body.
    case form
    /// `GET /`: the browser's upload page.
    case page
    case health
    case ready
    case metrics
    /// No such path.
    case notFound
    /// The path exists but not for this method; `allow` lists the methods it takes.
    case methodNotAllowed(allow: String)
    /// The target could not be decoded (bad percent-escapes).
    case badTarget

    public static func route(_ head: HTTPRequestHead) -> HTTPRoute {
        guard let path = HTTPRoute.percentDecoded(head.path) else { return .badTarget }
        guard path.first == UInt8(ascii: "/") else { return .badTarget }
        let resource: HTTPRoute? = switch path {
        case Array("/healthz".utf8): .health
        case Array("/readyz".utf8): .ready
        case Array("/metrics".utf8): .metrics
        default: nil
        }
        if let resource {
            return head.method == .get || head.method == .head ? resource : .methodNotAllowed(allow: "GET, HEAD")
        }
        switch head.method {
        case .put:
            let name = Array(path.dropFirst())
            return .put(name: name.isEmpty ? nil : name)
        case .post where path == [UInt8(ascii: "/")]:
            return .form
        case .get where path == [UInt8(ascii: "/")], .head where path == [UInt8(ascii: "/")]:
            return .page
        case .get, .head, .post, .patch, .delete, .options:
            return path == [UInt8(ascii: "/")] ? .methodNotAllowed(allow: "GET, HEAD, PUT, POST") : .notFound
        case .other:
            return .methodNotAllowed(allow: "GET, HEAD, PUT, POST")
        }
    }

    /// The path with `%XX` escapes decoded (bytes, not yet a name); nil for a malformed escape.
    /// `+` stays a plus: it means a space only in form bodies.
    public static func percentDecoded(_ path: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(path.utf8.count)
        var it = path.utf8.makeIterator()
        while let b = it.next() {
            guard b == UInt8(ascii: "%") else { out.append(b); continue }
            guard let h = it.next().flatMap(hexValue), let l = it.next().flatMap(hexValue) else { return nil }
            out.append(h << 4 | l)
        }
        return out
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// A stored name as a path segment: everything but unreserved characters escaped.
    public static func percentEncoded(_ name: String) -> String {
        var out = ""
        for b in name.utf8 {
            let unreserved = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E
            if unreserved { out.unicodeScalars.append(Unicode.Scalar(b)) } else { out += "%" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true) }
        }
        return out
    }
}
