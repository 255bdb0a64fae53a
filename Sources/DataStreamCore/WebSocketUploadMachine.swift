import Foundation  // JSONDecoder for the client's messages

/// The upload protocol of the WebSocket at `/ws` (docs/PROTOCOL.md §8): one connection's
/// messages and completed file operations in, actions out. One upload at a time; every upload
/// is a resumable partial, like a tus upload, so a dropped connection or a reloaded page goes
/// on from the bytes the server holds.
///
/// The client waits for `ready` after `begin`, and for `stored` (or `error`) after the last
/// byte; anything sent in those waits breaks the protocol and closes the connection.
///
/// A value that touches no socket and no file, with time passed in.
///
/// States: authenticating (with a token) → idle → opening → receiving → storing → idle …
/// Any state → closed.
public struct WebSocketUploadMachine {
    public struct Configuration: Sendable {
        /// Clients must prove this token (HMAC-SHA256 over the server's nonce, as native clients do).
        public var token: String?
        public var maxFileSize: UInt64
        public var maxNameLength: Int
        /// Nanoseconds a connection may wait on its client (for a message or an upload's bytes).
        public var idleTimeout: UInt64

        public init(token: String? = nil, maxFileSize: UInt64 = 1 << 40, maxNameLength: Int = NamePolicy.defaultMaxLength,
                    idleTimeout: UInt64 = 60_000_000_000) {
            self.token = token
            self.maxFileSize = maxFileSize
            self.maxNameLength = maxNameLength
            self.idleTimeout = idleTimeout
        }
    }

    public enum Action: Hashable, Sendable {
        case none
        /// Send this text message.
        case send(String)
        /// Look up the upload the client asks to resume; then call `lookedUp`.
        case lookUpUpload(UploadID)
        /// Create an empty upload of `size` bytes to be stored as `name`; then call
        /// `uploadCreated` or `uploadRefused`.
        case createUpload(name: String, size: UInt64)
        /// Open the upload to append at `offset`; then call `uploadOpened` or `uploadRefused`.
        case openUpload(UploadID, offset: UInt64)
        /// Append the binary bytes just received to the upload; with `last`, they are its end:
        /// store it once they are written, then call `uploadStored` or `uploadFailed`.
        case write(Int, last: Bool)
        /// Send this message (`ready` for an upload whose bytes are all held), then store the upload.
        case sendAndCommit(String)
        /// The connection is over: close the upload's file, keeping its partial for a resume.
        case endUpload
        /// Send `message` (if any), then a close frame with `code` and `reason`. The upload in
        /// progress, if any, keeps its partial.
        case close(code: UInt16, reason: String, message: String?)
        /// The client has not answered the close frame in time: close the stream now.
        case hangUp
    }

    /// Nanoseconds the client has to answer a close frame before the stream is closed.
    public static let closeLinger: UInt64 = 5_000_000_000

    public let configuration: Configuration

    private struct Upload: Hashable {
        var name: String
        var size: UInt64
        var id: UploadID?
        var received: UInt64 = 0
    }

    private enum State: Hashable {
        case authenticating(nonce: [UInt8])
        case idle
        case opening(Upload)
        case receiving(Upload)
        case storing(Upload)
        case closed
    }

    private var state: State = .idle
    private var lastInput: UInt64
    private var draining = false
    /// When a `tick` first saw the machine closed (the close frame's wait starts there).
    private var closedSince: UInt64?

    public init(configuration: Configuration, now: UInt64) {
        self.configuration = configuration
        self.lastInput = now
    }

    // MARK: - Queries

    /// An upload is open, or being opened or stored.
    public var hasUploadInProgress: Bool {
        switch state {
        case .opening, .receiving, .storing: true
        default: false
        }
    }

    /// The machine waits on the server (a file operation), not on the client.
    public var isWaitingOnServer: Bool {
        switch state {
        case .opening, .storing: true
        default: false
        }
    }

    public var isClosed: Bool { state == .closed }

    /// The upload's client-side name and size, while there is one.
    public var upload: (name: String, size: UInt64)? {
        switch state {
        case .opening(let u), .receiving(let u), .storing(let u): (u.name, u.size)
        default: nil
        }
    }

    // MARK: - Events

    /// The connection became a WebSocket: the greeting to send. With a token, `nonce` is the
    /// challenge the client must answer.
    public mutating func start(nonce: [UInt8]) -> Action {
        var hello: [(String, JSONValue)] = [("type", .string("hello")), ("version", .number(1)),
                                           ("maxFileSize", .number(configuration.maxFileSize))]
        if configuration.token != nil {
            state = .authenticating(nonce: nonce)
            hello += [("auth", .string("hmac-sha256")), ("nonce", .string(nonce.hexString))]
        } else {
            state = .idle
            hello.append(("auth", .string("none")))
        }
        return .send(JSONValue.object(hello).text)
    }

    /// A client message's fields (every field but `type` is optional on the wire).
    private struct ClientMessage: Decodable {
        var type: String
        var name: String?
        var size: UInt64?
        var resume: String?
        var mac: String?
    }

    public mutating func textReceived(_ bytes: [UInt8], now: UInt64) -> Action {
        lastInput = now
        guard let message = try? JSONDecoder().decode(ClientMessage.self, from: Data(bytes)) else {
            return violation("not a JSON message of this protocol")
        }
        switch state {
        case .authenticating(let nonce):
            guard message.type == "auth" else {
                return refuseAndClose(.authenticationRequired, code: 1008)
            }
            guard let token = configuration.token, let hex = message.mac, let mac = [UInt8](hex: hex),
                  Authentication.verify(token: token, nonce: nonce, response: mac) else {
                return refuseAndClose(.authenticationFailed, code: 1008)
            }
            state = .idle
            return .send(#"{"type":"welcome"}"#)
        case .idle:
            guard message.type == "begin" else { return violation("expected begin, got \(message.type)") }
            guard let size = message.size, let rawName = message.name else { return violation("begin needs a name and a size") }
            let name: String
            do throws(ProtocolError) { name = try NamePolicy.sanitise(Array(rawName.utf8), maxLength: configuration.maxNameLength) } catch {
                return .send(Self.error(error))
            }
            guard size <= configuration.maxFileSize else {
                return .send(Self.error(.fileTooLarge(size: size, limit: configuration.maxFileSize)))
            }
            if let resume = message.resume, let id = UploadID(hex: resume) {
                state = .opening(Upload(name: name, size: size, id: id))
                return .lookUpUpload(id)
            }
            state = .opening(Upload(name: name, size: size))
            return .createUpload(name: name, size: size)
        case .opening, .receiving, .storing:
            return violation("a message while an upload is open (wait for ready or stored)")
        case .closed:
            return .none
        }
    }

    /// `count` bytes of a binary message arrived.
    public mutating func binaryReceived(_ count: Int, now: UInt64) -> Action {
        lastInput = now
        guard case .receiving(var u) = state else {
            if state == .closed { return .none }
            return violation("binary data outside an upload (send begin and wait for ready)")
        }
        guard UInt64(count) <= u.size - u.received else {
            return violation("more bytes than the upload's size \(u.size)")
        }
        u.received += UInt64(count)
        if u.received == u.size {
            state = .storing(u)
            return .write(count, last: true)
        }
        state = .receiving(u)
        return .write(count, last: false)
    }

    /// The upload to resume, as the store holds it (nil: none with that id). Resumed when its
    /// name and size are the client's; otherwise a new upload begins.
    public mutating func lookedUp(name: String?, size: UInt64, held: UInt64) -> Action {
        guard case .opening(var u) = state, let id = u.id else { return .none }
        if name == u.name, size == u.size, held <= size {
            return .openUpload(id, offset: held)
        }
        u.id = nil
        state = .opening(u)
        return .createUpload(name: u.name, size: u.size)
    }

    public mutating func uploadCreated(_ id: UploadID) -> Action {
        guard case .opening(var u) = state else { return .none }
        u.id = id
        state = .opening(u)
        return .openUpload(id, offset: 0)
    }

    /// The upload is open at `offset` (what the server holds).
    public mutating func uploadOpened(offset: UInt64) -> Action {
        guard case .opening(var u) = state, let id = u.id else { return .none }
        u.received = offset
        let ready = JSONValue.object([("type", .string("ready")), ("id", .string(id.hex)), ("offset", .number(offset))]).text
        if offset == u.size {
            state = .storing(u)
            return .sendAndCommit(ready)
        }
        state = .receiving(u)
        return .send(ready)
    }

    /// The upload could not be opened (busy, disk full, a storage error): the client hears why
    /// and may begin another.
    public mutating func uploadRefused(_ error: ProtocolError) -> Action {
        guard case .opening = state else { return .none }
        if draining { return refuseAndClose(error, code: 1001) }
        state = .idle
        return .send(Self.error(error))
    }

    public mutating func uploadStored(name: String) -> Action {
        guard case .storing(let u) = state else { return .none }
        let stored = JSONValue.object([("type", .string("stored")), ("id", .string(u.id?.hex ?? "")), ("name", .string(name)),
                                       ("size", .number(u.size))]).text
        if draining {
            state = .closed
            return .close(code: 1001, reason: "the server is shutting down", message: stored)
        }
        state = .idle
        return .send(stored)
    }

    /// Writing or storing the upload failed; the partial stays for a later attempt.
    public mutating func uploadFailed(_ error: ProtocolError) -> Action {
        switch state {
        case .receiving, .storing: return refuseAndClose(error, code: 1011)
        default: return .none
        }
    }

    /// The client's close frame arrived, or its stream ended.
    public mutating func connectionEnded() -> Action {
        guard state != .closed else { return .none }
        state = .closed
        return .endUpload
    }

    /// The server drains: an idle connection closes now; an upload goes on to its end.
    public mutating func drain() -> Action {
        draining = true
        switch state {
        case .authenticating, .idle:
            state = .closed
            return .close(code: 1001, reason: "the server is shutting down", message: nil)
        default:
            return .none
        }
    }

    /// Time passes: a client silent for longer than the idle timeout is closed (its upload
    /// kept); one that leaves a close frame unanswered for `closeLinger` is hung up on.
    public mutating func tick(now: UInt64) -> Action {
        switch state {
        case .closed:
            guard let since = closedSince else { closedSince = now; return .none }
            return now > since && now - since > Self.closeLinger ? .hangUp : .none
        case .authenticating, .idle, .receiving:
            guard now > lastInput, now - lastInput > configuration.idleTimeout else { return .none }
            return refuseAndClose(.idleTimeout(seconds: Double(configuration.idleTimeout) / 1e9), code: 1001)
        default:
            return .none
        }
    }

    // MARK: - Helpers

    private mutating func violation(_ detail: String) -> Action {
        state = .closed
        return .close(code: 1008, reason: detail,
                      message: JSONValue.object([("type", .string("error")), ("code", .string("protocol_violation")),
                                                 ("message", .string(detail))]).text)
    }

    private mutating func refuseAndClose(_ error: ProtocolError, code: UInt16) -> Action {
        state = .closed
        return .close(code: code, reason: ProtocolError.label(code: error.code), message: Self.error(error))
    }

    /// An `error` message: the reason's name (as in `/metrics`) and its description.
    static func error(_ error: ProtocolError) -> String {
        JSONValue.object([("type", .string("error")), ("code", .string(ProtocolError.label(code: error.code))),
                          ("message", .string(error.description))]).text
    }
}
