/// The state of one HTTP/1.1 connection: parsed requests and completed file operations in,
/// actions out. Requests are taken one at a time (a pipelined request waits in the driver's
/// input until the one before it is answered), so responses go out in order.
///
/// A value that touches no socket and no file, with time passed in. The driver parses bytes
/// (`HTTPParsing.HTTPRequestParser`) and feeds the machine what the parser found.
///
/// States: awaitingHead → (a resource) responding → awaitingHead …
///                      → (PUT) opening → receiving → storing → responding → awaitingHead …
/// Any state → closed.
public struct HTTPConnectionMachine {
    public struct Configuration: Sendable {
        /// The largest body stored (413 past it, before a byte is written when the length is known).
        public var maxFileSize: UInt64
        /// The longest name, in UTF-8 bytes.
        public var maxNameLength: Int
        /// Nanoseconds from a head's first byte to its end (408 past it).
        public var headTimeout: UInt64
        /// Nanoseconds a kept-alive connection may wait for a next request, and a body may go
        /// without a byte.
        public var idleTimeout: UInt64
        /// Seconds an unfinished tus upload is kept after its last write (`Upload-Expires`).
        public var partialLifetime: Int
        /// With a token, the upload routes (PUT, forms, tus) take only requests that carry it as
        /// `Authorization: Bearer TOKEN` (401 otherwise).
        public var token: String?

        public init(maxFileSize: UInt64 = 1 << 40, maxNameLength: Int = NamePolicy.defaultMaxLength,
                    headTimeout: UInt64 = 30_000_000_000, idleTimeout: UInt64 = 60_000_000_000, partialLifetime: Int = 7 * 86_400,
                    token: String? = nil) {
            self.token = token
            self.maxFileSize = maxFileSize
            self.maxNameLength = maxNameLength
            self.headTimeout = headTimeout
            self.idleTimeout = idleTimeout
            self.partialLifetime = partialLifetime
        }
    }

    /// What the driver builds a response for itself (it needs the server's state).
    public enum Resource: Hashable, Sendable {
        case health, ready, metrics, page
    }

    public enum Action: Hashable, Sendable {
        case none
        /// Send these bytes (`100 Continue`) and go on reading.
        case send([UInt8])
        /// Write this response (only its head if `headOnly`), then call `responseSent`.
        case respond(HTTPResponse, headOnly: Bool)
        /// Build the resource's response, write it, then call `responseSent`.
        case serve(Resource, headOnly: Bool)
        /// Reserve room for the body and open a file without a name for it; then call
        /// `uploadOpened` or `uploadRefused`. `name` is sanitised; nil: generate one.
        case openUpload(name: String?, declaredSize: UInt64?)
        /// Every body byte is in: store the file under its name, then call `uploadStored` or `uploadFailed`.
        case commitUpload(size: UInt64)
        /// The upload failed for `reason`: delete its file (or, `keepPartial`, a tus upload's:
        /// flush and close it for a later PATCH). With a response: write it, then linger
        /// (`dropsInput`) as after `linger`, or close once it is written if the machine is closed.
        /// Without: close.
        case abortUpload(HTTPResponse?, reason: ProtocolError, keepPartial: Bool = false)
        /// tus: create an empty upload of `length` bytes to store as `name` (nil: a generated
        /// name); then call `tusCreated` or `uploadRefused`.
        case createTusUpload(name: String?, length: UInt64)
        /// tus: look the upload up; then call `tusFound` or `tusMissing`.
        case lookUpTusUpload(UploadID)
        /// tus: open the upload to append at `offset` (what the server must hold); then call
        /// `uploadOpened(tusLength:)`, `tusMissing` or `uploadRefused` (`.uploadBusy`,
        /// `.resumeMismatch` for another offset).
        case resumeTusUpload(UploadID, offset: UInt64)
        /// tus: the PATCH's bytes are in but the upload is not complete: flush and close its
        /// partial (kept); then call `uploadKept`.
        case keepUpload
        /// tus: abandon the upload; then call `tusTerminated`, `tusMissing` or `uploadRefused(.uploadBusy)`.
        case terminateTusUpload(UploadID)
        /// `POST /`: read the body as `multipart/form-data` with this boundary (after sending
        /// `100 Continue` if `continueFirst`); call `partBegan`, `bodyReceived` (a file part's
        /// bytes), `partEnded` and, at the body's end, `messageComplete`.
        case readForm(boundary: String, continueFirst: Bool)
        /// Close the connection now.
        case close
        /// `GET /ws` with a valid handshake: write these bytes (`101 Switching Protocols`),
        /// then hand the connection, with the input after the request, to a WebSocket driver.
        case upgradeToWebSocket([UInt8])
        /// The response that ends the connection is on its way: shut down the sending side and
        /// read and drop what the client still sends (a body not read), until its end or
        /// `tick` says `close`. Closing at once with unread input would reset the connection
        /// and could destroy the response before the client reads it.
        case linger
    }

    /// A file of a form, stored.
    struct FormFile: Hashable {
        var name: String
        var size: UInt64
    }

    struct Upload: Hashable {
        /// A form's files stored so far (nil: not a form).
        var form: [FormFile]?
        /// A tus PATCH: the offset it began at and the upload's length (known once open).
        var tus: (offset: UInt64, length: UInt64)? {
            get { tusOffset.map { ($0, tusLength) } }
            set { tusOffset = newValue?.offset; tusLength = newValue?.length ?? 0 }
        }
        var tusOffset: UInt64?
        var tusLength: UInt64 = 0
        var keepAlive: Bool
        var expectsContinue: Bool
        /// The length the head announced (nil: chunks).
        var declared: UInt64?
        var received: UInt64 = 0
    }

    enum State: Hashable {
        /// Waiting for a request; `began` is when its first byte came.
        case awaitingHead(since: UInt64, began: UInt64?)
        case opening(Upload)
        case receiving(Upload)
        case storing(Upload)
        /// tus: a request that touches no body waits for the store.
        case asking(keepAlive: Bool, headOnly: Bool)
        /// A form's body between its files (or in a plain field, whose bytes are dropped).
        case readingForm(Upload)
        /// A response is being written; `close`: the connection ends after it.
        case responding(close: Bool)
        /// The last response went out; dropping input until the client's end (since `since`).
        case lingering(since: UInt64)
        case closed
    }

    public let configuration: Configuration
    private(set) var state: State
    private var lastInput: UInt64
    private var draining = false
    private var peerEnded = false
    /// The connection closed while a tus upload was opening: its partial stays when the open answers.
    private var closedWhileOpeningTus = false

    public init(configuration: Configuration, now: UInt64) {
        self.configuration = configuration
        state = .awaitingHead(since: now, began: nil)
        lastInput = now
    }

    /// A short name of the state, for logs and tests.
    public var stateName: String {
        switch state {
        case .awaitingHead: "awaitingHead"
        case .asking: "asking"
        case .readingForm: "readingForm"
        case .opening: "opening"
        case .receiving: "receiving"
        case .storing: "storing"
        case .responding: "responding"
        case .lingering: "lingering"
        case .closed: "closed"
        }
    }

    /// Whether the driver should parse input now (false while a file operation or a response
    /// is pending: what follows waits, which keeps pipelined answers in order).
    public var takesInput: Bool {
        switch state {
        case .awaitingHead, .receiving, .readingForm: true
        default: false
        }
    }

    /// An upload has begun and is not yet answered (a draining server lets it finish).
    public var hasUploadInProgress: Bool {
        switch state {
        case .opening, .receiving, .storing, .readingForm: true
        default: false
        }
    }

    /// Whether the body being read is a form's (`readForm`).
    public var readsForm: Bool {
        switch state {
        case .readingForm(let u), .opening(let u), .receiving(let u), .storing(let u): u.form != nil
        default: false
        }
    }

    public var isClosed: Bool { state == .closed }

    /// Whether body bytes of an upload are arriving (a failed write must end it at once).
    public var isReceivingBody: Bool {
        if case .receiving = state { return true }
        return false
    }

    /// Whether the next move is the server's (a file opening or being stored, the store asked):
    /// a drain's deadline lets it finish.
    public var isWaitingOnServer: Bool {
        switch state {
        case .opening, .storing, .asking: true
        default: false
        }
    }

    /// Whether input is read and dropped (`linger`).
    public var dropsInput: Bool {
        if case .lingering = state { return true }
        return false
    }

    /// Whether the connection ends after the response being written (it says `Connection: close`).
    public var closesAfterResponse: Bool {
        if case .responding(let close) = state { return close || peerEnded || draining }
        return true
    }

    /// The longest a connection lingers after its last response.
    public static let lingerLimit: UInt64 = 5_000_000_000

    // MARK: - Events

    /// Bytes arrived (before they are parsed).
    public mutating func inputArrived(now: UInt64) {
        lastInput = now
        if case .awaitingHead(let since, nil) = state { state = .awaitingHead(since: since, began: now) }
    }

    /// A request's head is complete.
    public mutating func headReceived(_ head: HTTPRequestHead) -> Action {
        guard case .awaitingHead = state else { return closeNow() }
        // A body the route does not read cannot be skipped safely: answer, then close.
        let keepAlive = head.keepAlive && !draining
        let headOnly = head.method == .head
        func refuse(_ status: Int, _ message: String, headers: [HTTPHeader] = []) -> Action {
            state = .responding(close: !keepAlive || head.hasBody)
            return .respond(.error(status, message, headers: headers), headOnly: headOnly)
        }
        guard head.versionMajor == 1 else { return refuse(505, "HTTP/1.x only") }
        if WebSocketHandshake.claims(head) {
            switch WebSocketHandshake.answer(head) {
            case .switching(let switching):
                state = .closed
                return .upgradeToWebSocket(switching)
            case .refused(let response):
                state = .responding(close: !keepAlive || head.hasBody)
                return .respond(response, headOnly: headOnly)
            }
        }
        if head.upgrade { return refuse(501, "protocol upgrades are not served on this route") }
        if Tus.claims(head.path) { return tusRequest(head, keepAlive: keepAlive) }
        let route = HTTPRoute.route(head)
        switch route {
        case .put, .form:
            if !authorized(head) { return refuse(401, "this server needs its token: Authorization: Bearer TOKEN", headers: [Self.challenge]) }
        default:
            break
        }
        switch route {
        case .health, .ready, .metrics, .page:
            if head.hasBody { return refuse(400, "this route takes no body") }
            state = .responding(close: !keepAlive)
            let resource: Resource = switch HTTPRoute.route(head) {
            case .health: .health
            case .ready: .ready
            case .page: .page
            default: .metrics
            }
            return .serve(resource, headOnly: headOnly)
        case .put(let raw):
            var name: String?
            if let raw {
                do throws(ProtocolError) { name = try NamePolicy.sanitise(raw, maxLength: configuration.maxNameLength) } catch {
                    return refuse(400, error.description)
                }
            }
            let declared = head.chunked ? nil : (head.contentLength ?? 0)
            if let declared, declared > configuration.maxFileSize {
                return refuse(413, ProtocolError.fileTooLarge(size: declared, limit: configuration.maxFileSize).description)
            }
            state = .opening(Upload(keepAlive: keepAlive, expectsContinue: head.expectsContinue, declared: declared))
            return .openUpload(name: name, declaredSize: declared)
        case .form:
            guard let type = head.header("Content-Type"), let boundary = MultipartParser.boundary(contentType: type) else {
                return refuse(415, "POST / takes multipart/form-data (with a boundary)")
            }
            if let length = head.contentLength, length == 0 { return refuse(400, "an empty form") }
            var upload = Upload(keepAlive: keepAlive, expectsContinue: false, declared: nil)
            upload.form = []
            state = .readingForm(upload)
            return .readForm(boundary: boundary, continueFirst: head.expectsContinue)
        case .notFound:
            return refuse(404, "no such route: \(head.method.name) \(head.path)")
        case .methodNotAllowed(let allow):
            return refuse(405, "\(head.method.name) is not allowed here", headers: [HTTPHeader("Allow", allow)])
        case .badTarget:
            return refuse(400, "malformed request target")
        }
    }

    static let challenge = HTTPHeader("WWW-Authenticate", #"Bearer realm="datastream""#)

    /// Whether the request may use an upload route: no token is set, or it carries the token.
    private func authorized(_ head: HTTPRequestHead) -> Bool {
        guard let token = configuration.token else { return true }
        guard let value = head.header("Authorization"), value.count > 7, value.prefix(7).lowercased() == "bearer " else { return false }
        return Authentication.equalInConstantTime(Array(value.dropFirst(7).utf8), Array(token.utf8))
    }

    private mutating func tusRequest(_ head: HTTPRequestHead, keepAlive: Bool) -> Action {
        let headOnly = head.method == .head
        func answer(_ response: HTTPResponse) -> Action {
            state = .responding(close: !keepAlive || head.hasBody)
            return .respond(response, headOnly: headOnly)
        }
        let request = Tus.request(head)
        if request != .options, !authorized(head) {
            return answer(Tus.error(401, "this server needs its token: Authorization: Bearer TOKEN").adding(Self.challenge))
        }
        switch request {
        case .refused(let status, let message):
            return answer(Tus.error(status, message))
        case .options:
            return answer(Tus.options(maxSize: configuration.maxFileSize))
        case .create(let length, let raw):
            if length > configuration.maxFileSize {
                return answer(Tus.error(413, ProtocolError.fileTooLarge(size: length, limit: configuration.maxFileSize).description))
            }
            var name: String?
            if let raw, !raw.isEmpty {
                do throws(ProtocolError) { name = try NamePolicy.sanitise(raw, maxLength: configuration.maxNameLength) } catch {
                    return answer(Tus.error(400, error.description))
                }
            }
            state = .asking(keepAlive: keepAlive, headOnly: false)
            return .createTusUpload(name: name, length: length)
        case .status(let id):
            if head.hasBody { return answer(Tus.error(400, "HEAD takes no body")) }
            state = .asking(keepAlive: keepAlive, headOnly: true)
            return .lookUpTusUpload(id)
        case .terminate(let id):
            if head.hasBody { return answer(Tus.error(400, "DELETE takes no body")) }
            state = .asking(keepAlive: keepAlive, headOnly: false)
            return .terminateTusUpload(id)
        case .append(let id, let offset):
            var upload = Upload(keepAlive: keepAlive, expectsContinue: head.expectsContinue, declared: head.chunked ? nil : (head.contentLength ?? 0))
            upload.tus = (offset, 0)
            state = .opening(upload)
            return .resumeTusUpload(id, offset: offset)
        }
    }

    /// A form's part begins: a file (`filename`, raw) is opened; a plain field's bytes are dropped.
    public mutating func partBegan(filename: [UInt8]?) -> Action {
        guard case .readingForm(var upload) = state else { return state == .closed ? .none : unexpected() }
        // A file input left empty sends a part with an empty file name: nothing to store.
        guard let filename, !filename.isEmpty else { return .none }
        let name: String
        do throws(ProtocolError) { name = try NamePolicy.sanitise(filename, maxLength: configuration.maxNameLength) } catch {
            state = .lingering(since: lastInput)
            return .abortUpload(.error(400, error.description), reason: error)
        }
        upload.received = 0
        state = .opening(upload)
        return .openUpload(name: name, declaredSize: nil)
    }

    /// A form's part ends: a file's is stored (then `uploadStored` goes back to the form).
    public mutating func partEnded() -> Action {
        switch state {
        case .readingForm: return .none
        case .receiving(let upload) where upload.form != nil:
            state = .storing(upload)
            return .commitUpload(size: upload.received)
        case .closed, .lingering: return .none
        default: return unexpected()
        }
    }

    /// The form's body is not `multipart/form-data` as announced.
    public mutating func formFailed(_ detail: String) -> Action {
        switch state {
        case .readingForm, .receiving:
            state = .lingering(since: lastInput)
            return .abortUpload(.error(400, "malformed form: \(detail)"), reason: .connectionFailed(reason: "malformed form: \(detail)"))
        case .closed, .lingering: return .none
        default: return unexpected()
        }
    }

    /// tus: the upload was created; `now` is the wall clock (seconds since the epoch).
    public mutating func tusCreated(_ id: UploadID, now: Int) -> Action {
        guard case .asking(let keepAlive, _) = state else { return state == .closed ? .none : unexpected() }
        state = .responding(close: !keepAlive)
        return .respond(HTTPResponse(status: 201, headers: [Tus.resumable, HTTPHeader("Location", Tus.root + id.hex),
                                                            HTTPHeader("Upload-Expires", Tus.httpDate(now + configuration.partialLifetime))]), headOnly: false)
    }

    /// tus: the upload holds `offset` of its `length` bytes.
    public mutating func tusFound(offset: UInt64, length: UInt64) -> Action {
        guard case .asking(let keepAlive, let headOnly) = state else { return state == .closed ? .none : unexpected() }
        state = .responding(close: !keepAlive)
        return .respond(HTTPResponse(status: 200, headers: [Tus.resumable, HTTPHeader("Upload-Offset", "\(offset)"), HTTPHeader("Upload-Length", "\(length)"),
                                                            HTTPHeader("Cache-Control", "no-store")]), headOnly: headOnly)
    }

    /// tus: no such upload (never created, terminated, expired, or stored already).
    public mutating func tusMissing() -> Action {
        switch state {
        case .asking(let keepAlive, let headOnly):
            state = .responding(close: !keepAlive)
            return .respond(Tus.error(404, "no such upload"), headOnly: headOnly)
        case .opening:
            state = .responding(close: true)  // its body is not read
            return .respond(Tus.error(404, "no such upload"), headOnly: false)
        case .closed:
            return .none
        default:
            return unexpected()
        }
    }

    /// tus: the upload is gone.
    public mutating func tusTerminated() -> Action {
        guard case .asking(let keepAlive, _) = state else { return state == .closed ? .none : unexpected() }
        state = .responding(close: !keepAlive)
        return .respond(HTTPResponse(status: 204, headers: [Tus.resumable]), headOnly: false)
    }

    /// tus: the PATCH's bytes are on disk and the partial is closed; `now` is the wall clock.
    public mutating func uploadKept(now: Int) -> Action {
        guard case .storing(let upload) = state, let tus = upload.tus else { return state == .closed ? .none : unexpected() }
        state = .responding(close: !upload.keepAlive || draining || peerEnded)
        return .respond(HTTPResponse(status: 204, headers: [Tus.resumable, HTTPHeader("Upload-Offset", "\(tus.offset + upload.received)"),
                                                            HTTPHeader("Upload-Expires", Tus.httpDate(now + configuration.partialLifetime))]), headOnly: false)
    }

    /// The upload's file is open and its room reserved: its body may come. A tus upload
    /// gives its length (`tusLength`), which bounds what the PATCH may add.
    public mutating func uploadOpened(tusLength: UInt64? = nil) -> Action {
        switch state {
        case .opening(var upload):
            if let tus = upload.tus, let tusLength {
                upload.tus = (tus.offset, tusLength)
                if let declared = upload.declared, tus.offset + declared > tusLength {
                    state = .lingering(since: lastInput)
                    return .abortUpload(Tus.error(413, "the body goes past the upload's length (\(tusLength) bytes)"),
                                        reason: .fileTooLarge(size: tus.offset + declared, limit: tusLength), keepPartial: true)
                }
            }
            state = .receiving(upload)
            return upload.expectsContinue && upload.form == nil ? .send(HTTPResponse.continueBytes) : .none
        case .closed:
            return .abortUpload(nil, reason: .unexpectedEndOfStream(received: 0, expected: 0), keepPartial: closedWhileOpeningTus)  // the client left while the file was opening
        default:
            return unexpected()
        }
    }

    /// The upload could not begin (no room, too large, the file would not open).
    public mutating func uploadRefused(_ error: ProtocolError) -> Action {
        switch state {
        case .opening(let upload) where upload.tusOffset != nil:
            state = .responding(close: true)  // its body, if sent, is not read
            return .respond(Tus.error(HTTPConnectionMachine.tusStatus(for: error), error.description), headOnly: false)
        case .opening:
            state = .responding(close: true)
            return .respond(.error(HTTPConnectionMachine.status(for: error), error.description), headOnly: false)
        case .asking(let keepAlive, _):
            state = .responding(close: !keepAlive)
            return .respond(Tus.error(HTTPConnectionMachine.tusStatus(for: error), error.description), headOnly: false)
        case .closed:
            return .none
        default:
            return unexpected()
        }
    }

    /// `count` body bytes arrived (decoded from chunks); the driver queued them for the file.
    public mutating func bodyReceived(_ count: Int) -> Action {
        guard case .receiving(var upload) = state else { return count == 0 ? .none : unexpected() }
        upload.received += UInt64(count)
        if let tus = upload.tus, tus.offset + upload.received > tus.length {
            state = .lingering(since: lastInput)  // answered; the rest of the body is dropped
            let error = ProtocolError.fileTooLarge(size: tus.offset + upload.received, limit: tus.length)
            return .abortUpload(Tus.error(413, "the body goes past the upload's length (\(tus.length) bytes)"), reason: error, keepPartial: true)
        }
        if upload.received > configuration.maxFileSize {
            state = .lingering(since: lastInput)  // answered; the rest of the body is dropped
            let error = ProtocolError.fileTooLarge(size: upload.received, limit: configuration.maxFileSize)
            return .abortUpload(.error(413, error.description), reason: error)
        }
        state = .receiving(upload)
        return .none
    }

    /// Bytes of the body cannot be kept (no room left for them, a write failed).
    public mutating func uploadBroken(_ error: ProtocolError) -> Action {
        guard case .receiving(let upload) = state else { return state == .closed ? .none : unexpected() }
        state = .lingering(since: lastInput)  // answered; the rest of the body is dropped
        return .abortUpload(.error(HTTPConnectionMachine.status(for: error), error.description), reason: error, keepPartial: upload.tus != nil)
    }

    /// The request's body is complete.
    public mutating func messageComplete() -> Action {
        switch state {
        case .readingForm(let upload):
            let files = upload.form ?? []
            guard !files.isEmpty else {
                state = .responding(close: !upload.keepAlive || draining || peerEnded)
                return .respond(.error(400, "the form holds no file"), headOnly: false)
            }
            state = .responding(close: !upload.keepAlive || draining || peerEnded)
            return .respond(.json(201, [("files", .array(files.map { .object([("name", .string($0.name)), ("size", .number($0.size))]) }))]), headOnly: false)
        case .receiving(let upload) where upload.form != nil:
            state = .lingering(since: lastInput)  // the body ended inside a file part
            return .abortUpload(.error(400, "malformed form: the body ended inside a part"), reason: .unexpectedEndOfStream(received: upload.received, expected: upload.received))
        case .receiving(let upload):
            state = .storing(upload)
            if let tus = upload.tus {
                return tus.offset + upload.received == tus.length ? .commitUpload(size: tus.length) : .keepUpload
            }
            return .commitUpload(size: upload.received)
        case .awaitingHead, .responding, .lingering, .closed:
            return .none  // a request without a body, answered already
        default:
            return unexpected()
        }
    }

    /// The upload is under its final name.
    public mutating func uploadStored(name: String) -> Action {
        guard case .storing(var upload) = state else { return state == .closed ? .none : unexpected() }
        if upload.form != nil {
            upload.form!.append(FormFile(name: name, size: upload.received))
            upload.received = 0
            state = .readingForm(upload)
            return .none
        }
        state = .responding(close: !upload.keepAlive || draining || peerEnded)
        if let tus = upload.tus {
            return .respond(HTTPResponse(status: 204, headers: [Tus.resumable, HTTPHeader("Upload-Offset", "\(tus.length)"),
                                                                HTTPHeader("DataStream-Stored-Name", HTTPRoute.percentEncoded(name))]), headOnly: false)
        }
        let location = "/" + HTTPRoute.percentEncoded(name)
        return .respond(.json(201, [("name", .string(name)), ("size", .number(upload.received))], headers: [HTTPHeader("Location", location)]), headOnly: false)
    }

    /// Storing failed; the file is gone.
    public mutating func uploadFailed(_ error: ProtocolError) -> Action {
        guard case .storing = state else { return state == .closed ? .none : unexpected() }
        state = .responding(close: true)
        return .respond(.error(HTTPConnectionMachine.status(for: error), error.description), headOnly: false)
    }

    /// The response is written (queued to the socket).
    public mutating func responseSent(now: UInt64) -> Action {
        guard case .responding(let close) = state else { return state == .closed ? .none : unexpected() }
        if peerEnded { return closeNow() }
        if close || draining {
            state = .lingering(since: now)
            return .linger
        }
        state = .awaitingHead(since: now, began: nil)
        lastInput = now
        return .none
    }

    /// The input is not HTTP the parser accepts.
    public mutating func parseFailed(headTooLarge: Bool, detail: String) -> Action {
        switch state {
        case .readingForm:
            state = .lingering(since: lastInput)
            return .abortUpload(.error(400, "malformed request body: \(detail)"), reason: .connectionFailed(reason: "malformed request body: \(detail)"))
        case .receiving(let upload):
            state = .lingering(since: lastInput)  // answered; the rest of the body is dropped
            return .abortUpload(.error(400, "malformed request body: \(detail)"), reason: .connectionFailed(reason: "malformed request body: \(detail)"), keepPartial: upload.tus != nil)
        case .awaitingHead:
            state = .responding(close: true)
            return headTooLarge ? .respond(.error(431, detail), headOnly: false) : .respond(.error(400, "malformed request: \(detail)"), headOnly: false)
        default:
            return closeNow()
        }
    }

    /// The client ended its side of the stream.
    public mutating func endOfStream() -> Action {
        peerEnded = true
        switch state {
        case .opening(let upload):
            closedWhileOpeningTus = upload.tus != nil
            return closeNow()  // the open in flight is answered with abortUpload
        case .awaitingHead, .lingering, .asking, .readingForm:
            return closeNow()  // a form's files stored so far stay
        case .receiving(let upload):
            state = .closed
            return .abortUpload(nil, reason: .unexpectedEndOfStream(received: upload.received, expected: upload.declared ?? upload.received),
                                keepPartial: upload.tus != nil)  // the body was cut short; a tus upload resumes
        case .storing, .responding:
            return .none  // finish and answer; the close follows the response
        case .closed:
            return .none
        }
    }

    /// The server's clock: a head that takes too long gets 408, a kept-alive connection idle
    /// too long is closed, a body silent too long is abandoned.
    public mutating func tick(now: UInt64) -> Action {
        switch state {
        case .awaitingHead(let since, let began):
            if let began, now &- began >= configuration.headTimeout {
                state = .responding(close: true)
                return .respond(.error(408, "the request head did not arrive in time"), headOnly: false)
            }
            if began == nil, now &- since >= configuration.idleTimeout { return closeNow() }
            return .none
        case .receiving(let upload):
            guard now &- lastInput >= configuration.idleTimeout else { return .none }
            state = .closed
            return .abortUpload(.error(408, "no body bytes for too long"), reason: .idleTimeout(seconds: Double(configuration.idleTimeout) / 1e9), keepPartial: upload.tus != nil)
        case .lingering(let since):
            return now &- since >= HTTPConnectionMachine.lingerLimit ? closeNow() : .none
        case .readingForm:
            return now &- lastInput >= configuration.idleTimeout ? closeNow() : .none
        default:
            return .none
        }
    }

    /// The server drains: an idle connection closes now; one with a request in hand finishes
    /// it and closes after the response.
    public mutating func drain() -> Action {
        draining = true
        if case .awaitingHead(_, nil) = state { return closeNow() }
        return .none
    }

    private mutating func closeNow() -> Action {
        state = .closed
        return .close
    }

    private mutating func unexpected() -> Action {
        switch state {
        case .opening(let upload), .receiving(let upload):
            state = .closed
            return .abortUpload(nil, reason: .connectionFailed(reason: "unexpected event"), keepPartial: upload.tus != nil)
        default:
            return closeNow()
        }
    }

    /// The status a refused tus request is answered with.
    public static func tusStatus(for error: ProtocolError) -> Int {
        switch error {
        case .uploadBusy: 423
        case .resumeMismatch: 409
        default: status(for: error)
        }
    }

    /// The status a refused or failed upload is answered with.
    public static func status(for error: ProtocolError) -> Int {
        switch error {
        case .diskFull: 507
        case .fileTooLarge: 413
        case .invalidName: 400
        case .serverBusy, .uploadBusy, .tooManyConnections, .shuttingDown: 503
        default: 500
        }
    }
}
