import Crypto
import Foundation  // base64 only

/// The opening handshake of RFC 6455 §4.2 at `GET /ws`: whether a request may become a
/// WebSocket, and the `101 Switching Protocols` answer. Pure.
public enum WebSocketHandshake {
    /// The path the upload socket is served at.
    public static let path = "/ws"
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// Whether the request is for the upload socket's path (`route` then decides).
    public static func claims(_ head: HTTPRequestHead) -> Bool {
        head.path == path
    }

    /// `Sec-WebSocket-Accept` for a client's key: base64(SHA-1(key + the RFC's GUID)).
    public static func accept(key: String) -> String {
        Data(Insecure.SHA1.hash(data: Array((key + guid).utf8))).base64EncodedString()
    }

    /// The answer to a handshake.
    public enum Answer: Hashable, Sendable {
        /// The `101` answer's bytes (no body, no `Content-Length`).
        case switching([UInt8])
        /// The error response that refuses the request.
        case refused(HTTPResponse)
    }

    public static func answer(_ head: HTTPRequestHead) -> Answer {
        guard head.method == .get else {
            return .refused(.error(405, "the upload socket takes GET with Upgrade: websocket", headers: [HTTPHeader("Allow", "GET")]))
        }
        guard head.versionMajor == 1, head.versionMinor >= 1, !head.hasBody else {
            return .refused(.error(400, "a WebSocket handshake is an HTTP/1.1 GET without a body"))
        }
        let upgrade = head.header("Upgrade")?.lowercased() ?? ""
        let connection = head.header("Connection")?.lowercased() ?? ""
        guard upgrade.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == "websocket" }),
              connection.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == "upgrade" }) else {
            return .refused(.error(426, "this path is a WebSocket: send Upgrade: websocket", headers: [HTTPHeader("Upgrade", "websocket")]))
        }
        guard head.header("Sec-WebSocket-Version")?.trimmingCharacters(in: .whitespaces) == "13" else {
            return .refused(.error(426, "only WebSocket version 13 is served", headers: [HTTPHeader("Sec-WebSocket-Version", "13")]))
        }
        guard let key = head.header("Sec-WebSocket-Key")?.trimmingCharacters(in: .whitespaces),
              let nonce = Data(base64Encoded: key), nonce.count == 16 else {
            return .refused(.error(400, "Sec-WebSocket-Key must be 16 bytes in base64"))
        }
        let text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: \(accept(key: key))\r\n\r\n"
        return .switching(Array(text.utf8))
    }
}
