import CHTTPParser
import DataStreamCore

/// The thin Swift face of Debian's `http_parser` (nodejs/http-parser 2.9) for requests: bytes
/// in, `HTTPRequestHead`s, body bytes and message ends out. Chunked bodies arrive decoded.
///
/// It stops after each head and after each message's end, so that the caller decides what
/// happens next (open a file, answer) before any byte of what follows is parsed: pipelined
/// requests are then taken one at a time. The caller feeds the rest of its input again.
///
/// One per connection, on the loop's thread.
public final class HTTPRequestParser {
    /// What a call to `parse` found, in order.
    public enum Event {
        /// A request's head is complete. Parsing stopped after it.
        case head(HTTPRequestHead)
        /// Body bytes (decoded from chunks): they point into the input given to `parse`.
        case body(UnsafeRawBufferPointer)
        /// The request's body is complete. Parsing stopped after it.
        case end
    }

    /// Why the input is not HTTP this parser accepts.
    public struct Failure: Error, Hashable, CustomStringConvertible {
        /// The parser's error name (`HPE_INVALID_METHOD`...), or `HEAD_TOO_LARGE`.
        public let name: String
        public let detail: String
        /// The head passed `maxHeadBytes` (431, not 400).
        public var isHeadTooLarge: Bool { name == "HEAD_TOO_LARGE" }
        public var description: String { "\(detail) (\(name))" }
    }

    /// The longest request head accepted: the target and the header names and values, in bytes
    /// (the parser's own bound, 80 KiB for the whole head, applies too).
    public let maxHeadBytes: Int
    private var parser = http_parser()
    private var settings = http_parser_settings()
    private var handler: ((Event) -> Void)?
    // The head being read.
    private var url: [UInt8] = []
    private var fields: [(name: [UInt8], value: [UInt8])] = []
    private var lastWasValue = false
    private var headBytes = 0
    private var headTooLarge = false
    /// Set by `stopAfterThisEvent`: parsing stops after the body bytes being delivered.
    private var stopRequested = false
    /// Between requests: no byte of a next request parsed yet.
    public private(set) var isBetweenMessages = true
    /// A request asked to switch protocols and its head is done: the bytes that follow are not HTTP.
    public private(set) var upgraded = false

    public init(maxHeadBytes: Int = 16 << 10) {
        self.maxHeadBytes = maxHeadBytes
        http_parser_init(&parser, HTTP_REQUEST)
        http_parser_settings_init(&settings)
        settings.on_message_begin = { p in
            let me = HTTPRequestParser.owner(p)
            me.isBetweenMessages = false
            me.url.removeAll(keepingCapacity: true)
            me.fields.removeAll(keepingCapacity: true)
            me.lastWasValue = false
            me.headBytes = 0
            return 0
        }
        settings.on_url = { p, at, n in HTTPRequestParser.owner(p).headPart(at, n) { $0.url.append(contentsOf: $1) } }
        settings.on_header_field = { p, at, n in
            HTTPRequestParser.owner(p).headPart(at, n) { me, bytes in
                if me.lastWasValue || me.fields.isEmpty { me.fields.append(([], [])) }
                me.fields[me.fields.count - 1].name.append(contentsOf: bytes)
                me.lastWasValue = false
            }
        }
        settings.on_header_value = { p, at, n in
            HTTPRequestParser.owner(p).headPart(at, n) { me, bytes in
                if me.fields.isEmpty { me.fields.append(([], [])) }
                me.fields[me.fields.count - 1].value.append(contentsOf: bytes)
                me.lastWasValue = true
            }
        }
        settings.on_headers_complete = { p in
            guard let p else { return -1 }
            let me = HTTPRequestParser.owner(p)
            me.handler?(.head(me.makeHead(p)))
            http_parser_pause(p, 1)
            return 0
        }
        settings.on_body = { p, at, n in
            guard let at else { return 0 }
            let me = HTTPRequestParser.owner(p)
            me.handler?(.body(UnsafeRawBufferPointer(start: at, count: n)))
            if me.stopRequested {
                me.stopRequested = false
                http_parser_pause(p, 1)
            }
            return 0
        }
        settings.on_message_complete = { p in
            guard let p else { return -1 }
            let me = HTTPRequestParser.owner(p)
            me.isBetweenMessages = true
            me.handler?(.end)
            // After an upgrade's request the parser stops by itself, returning where the new
            // protocol begins; a pause here would leave the head's last byte untaken.
            if p.pointee.upgrade == 0 { http_parser_pause(p, 1) }
            return 0
        }
    }

    private static func owner(_ p: UnsafeMutablePointer<http_parser>?) -> HTTPRequestParser {
        Unmanaged<HTTPRequestParser>.fromOpaque(p!.pointee.data).takeUnretainedValue()
    }

    private func headPart(_ at: UnsafePointer<CChar>?, _ n: Int, _ add: (HTTPRequestParser, UnsafeRawBufferPointer) -> Void) -> Int32 {
        headBytes += n
        guard headBytes <= maxHeadBytes else { headTooLarge = true; return 1 }
        if let at { add(self, UnsafeRawBufferPointer(start: at, count: n)) }
        return 0
    }

    private func makeHead(_ p: UnsafeMutablePointer<http_parser>) -> HTTPRequestHead {
        let method = String(cString: http_method_str(http_method(rawValue: UInt32(p.pointee.method))))
        let flags = UInt32(p.pointee.flags)
        return HTTPRequestHead(
            method: HTTPMethod(method),
            target: String(decoding: url, as: UTF8.self),
            versionMajor: Int(p.pointee.http_major), versionMinor: Int(p.pointee.http_minor),
            headers: fields.map { HTTPHeader(String(decoding: $0.name, as: UTF8.self), String(decoding: $0.value, as: UTF8.self)) },
            contentLength: flags & F_CONTENTLENGTH.rawValue != 0 ? p.pointee.content_length : nil,
            chunked: flags & F_CHUNKED.rawValue != 0,
            keepAlive: http_should_keep_alive(p) != 0,
            upgrade: p.pointee.upgrade != 0)
    }

    /// Called from the handler of a `.body` event: parsing stops after it (the caller keeps
    /// what of those bytes it could not take yet, and feeds the rest of its input later).
    public func stopAfterThisEvent() {
        stopRequested = true
    }

    /// Parses from the start of `input`, calling `handler` for each event, until the input is
    /// used up or a head or a message's end was delivered. Returns how many bytes it took; call
    /// again with the rest. After an upgrade's head it takes nothing more (`upgraded`).
    public func parse(_ input: UnsafeRawBufferPointer, _ handler: (Event) -> Void) throws(Failure) -> Int {
        guard !upgraded, !input.isEmpty else { return 0 }
        let consumed: Int = withoutActuallyEscaping(handler) { handler in
            self.handler = handler
            defer { self.handler = nil }
            return withUnsafeMutablePointer(to: &parser) { p in
                p.pointee.data = Unmanaged.passUnretained(self).toOpaque()
                return input.withMemoryRebound(to: CChar.self) { http_parser_execute(p, &settings, $0.baseAddress, $0.count) }
            }
        }
        let errno = http_errno(rawValue: UInt32(parser.http_errno))
        if errno == HPE_PAUSED {
            http_parser_pause(&parser, 0)
        } else if errno != HPE_OK {
            if headTooLarge || errno == HPE_HEADER_OVERFLOW {
                throw Failure(name: "HEAD_TOO_LARGE", detail: "the request head is longer than \(maxHeadBytes) bytes")
            }
            throw Failure(name: String(cString: http_errno_name(errno)), detail: String(cString: http_errno_description(errno)))
        }
        // The upgrade flag is set with the head; the request ends (and the new protocol
        // begins) only once the parse after the head's pause has taken its last byte.
        if parser.upgrade != 0, errno != HPE_PAUSED { upgraded = true }
        return consumed
    }

    /// The peer ended its stream. Throws if a request was cut short (a body shorter than its
    /// length, a head without its end).
    public func finish() throws(Failure) {
        guard !upgraded else { return }
        _ = withUnsafeMutablePointer(to: &parser) { p in
            p.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            return http_parser_execute(p, &settings, nil, 0)
        }
        let errno = http_errno(rawValue: UInt32(parser.http_errno))
        if errno != HPE_OK && errno != HPE_PAUSED {
            throw Failure(name: String(cString: http_errno_name(errno)), detail: String(cString: http_errno_description(errno)))
        }
        if !isBetweenMessages {
            throw Failure(name: "HPE_INVALID_EOF_STATE", detail: "stream ended in the middle of a request")
        }
    }
}
