/// The client side of one native TCP connection: HELLO, WELCOME, [AUTH, AUTH_OK], then for each
/// file FILE, READY (or RESULT at once), the data, END and RESULT.
///
/// A value that touches no socket and no file: `datastream send` (`Sender`) and the load
/// generator both drive it. The driver reads the file and writes its bytes; this machine decides
/// what each frame from the server means. After a failure every event returns `.none`.
public struct NativeClientMachine {
    /// Why the conversation ended early.
    public enum Failure: Hashable, Sendable, CustomStringConvertible {
        /// The server asks for a token and the client was given none.
        case tokenRequired
        /// The server answered with an ERROR frame.
        case serverError(code: UInt16, message: String)
        /// The server broke the protocol: a malformed or unexpected frame, or a resume offset
        /// the client cannot honour.
        case protocolViolation(String)

        public var description: String {
            switch self {
            case .tokenRequired: return "the server requires a token (--token)"
            case .serverError(let code, let message): return "server error \(code): \(message)"
            case .protocolViolation(let detail): return detail
            }
        }
    }

    /// What the driver must do after an event.
    public enum Action: Hashable, Sendable {
        case none
        /// Write these bytes to the server.
        case send([UInt8])
        /// The connection is ready for a file: call `announce(_:)`, or close it if there is none.
        case announceNextFile
        /// The server holds the announced file's first `offset` bytes: send the rest, then call
        /// `streamed(digest:)`.
        case stream(from: UInt64)
        /// The server's answer for the announced file (stored, or why not). The connection is
        /// ready for the next file: call `announce(_:)` or close it.
        case finished(UploadResult)
        /// Give up on the connection.
        case fail(Failure)
    }

    private enum State {
        case idle
        case awaitingWelcome
        case authenticating
        case ready
        case awaitingReady(size: UInt64)
        case streaming
        case awaitingResult
        case failed
    }

    private var state: State = .idle
    private let token: String?
    private let resumeAllowed: Bool
    private var frames = FrameAccumulator()

    /// `token` answers the server's challenge. With `resumeAllowed` false, a READY at any offset
    /// but 0 is a protocol violation (the load generator's ids are fresh, so a server holding
    /// part of one is wrong).
    public init(token: String?, resumeAllowed: Bool = true) {
        self.token = token
        self.resumeAllowed = resumeAllowed
    }

    /// The connection is up: say HELLO.
    public mutating func connected() -> Action {
        guard case .idle = state else { preconditionFailure("connected twice") }
        state = .awaitingWelcome
        return .send(Wire.hello())
    }

    /// Announces the next file (after `.announceNextFile` or `.finished`).
    public mutating func announce(_ header: FileHeader) -> Action {
        guard case .ready = state else { preconditionFailure("a file announced while another is in progress") }
        state = .awaitingReady(size: header.size)
        return .send(Wire.file(header))
    }

    /// Every byte of the file from the resume offset on has been handed to the socket.
    public mutating func streamed(digest: [UInt8]) -> Action {
        guard case .streaming = state else { preconditionFailure("streamed without a READY") }
        state = .awaitingResult
        return .send(Wire.end(digest: digest))
    }

    /// Takes bytes from the server until one frame is complete (or the input runs out); returns
    /// how many it took and what that frame means. Call again with the rest.
    public mutating func bytesReceived(_ input: UnsafeRawBufferPointer) -> (consumed: Int, action: Action) {
        if case .failed = state { return (input.count, .none) }
        let (taken, outcome) = frames.append(input)
        switch outcome {
        case .needMore:
            return (taken, .none)
        case .tooLarge(let n):
            return (taken, fail(.protocolViolation("server sent a frame of \(n) bytes")))
        case .frame(let type):
            let action = frameReceived(type, frames.payload)
            frames.reset()
            return (taken, action)
        }
    }

    private mutating func frameReceived(_ type: UInt8, _ payload: ArraySlice<UInt8>) -> Action {
        do throws(ProtocolError) {
            switch (state, Wire.FrameType(rawValue: type)) {
            case (.awaitingWelcome, .welcome):
                let (_, nonce) = try Wire.decodeWelcome(payload)
                guard let nonce else {
                    state = .ready
                    return .announceNextFile
                }
                guard let token else { return fail(.tokenRequired) }
                state = .authenticating
                return .send(Wire.auth(mac: Authentication.response(token: token, nonce: nonce)))
            case (.authenticating, .authOK):
                state = .ready
                return .announceNextFile
            case (.awaitingReady(let size), .ready):
                let (_, offset) = try Wire.decodeReady(payload)
                guard offset <= size else { return fail(.protocolViolation("server asked to resume at \(offset), past the end")) }
                guard offset == 0 || resumeAllowed else { return fail(.protocolViolation("server asked to resume at \(offset) a fresh upload")) }
                state = .streaming
                return .stream(from: offset)
            case (.awaitingReady, .result), (.awaitingResult, .result):
                let result = try Wire.decodeResult(payload)
                state = .ready
                return .finished(result)
            case (_, .error):
                let (code, message) = Wire.decodeError(payload)
                return fail(.serverError(code: code, message: message))
            default:
                return fail(.protocolViolation("unexpected frame 0x\(String(type, radix: 16)) from the server"))
            }
        } catch {
            return fail(.protocolViolation(error.description))
        }
    }

    private mutating func fail(_ failure: Failure) -> Action {
        state = .failed
        return .fail(failure)
    }
}
