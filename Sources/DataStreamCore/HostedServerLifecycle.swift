/// What a host program may do with an embedded server, and when (the C API's handle): start
/// once, stop or drain once it started (or at once if it never did), free only before start or
/// after the stop's callback. A pure value: each call is an event that says whether it may go
/// ahead, so a bad call becomes an error instead of a crash.
public struct HostedServerLifecycle: Sendable, Equatable {
    private enum State: Sendable, Equatable {
        case created
        case started
        case stopping
        case stopped
    }

    /// Why a call is refused now.
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        case alreadyStarted
        case alreadyStopping
        case notStarted
        case stillRunning

        public var description: String {
            switch self {
            case .alreadyStarted: "the server was already started (start it once)"
            case .alreadyStopping: "the server is already stopping or stopped"
            case .notStarted: "the server is not started"
            case .stillRunning: "the server is running: stop it and free it from the stop's callback"
            }
        }
    }

    /// What a stop or drain request should do.
    public enum StopAction: Equatable, Sendable {
        /// Stop the running server; the callback comes when its handles are closed.
        case stopServer
        /// Nothing was opened: call back at once.
        case callBackNow
    }

    private var state = State.created

    public init() {}

    /// Start: allowed once, before any stop.
    public mutating func start() -> Refusal? {
        switch state {
        case .created:
            state = .started
            return nil
        case .started: return .alreadyStarted
        case .stopping, .stopped: return .alreadyStopping
        }
    }

    /// A start that failed: the server opened nothing and may be freed (or started again).
    public mutating func startFailed() {
        if state == .started { state = .created }
    }

    /// Stop or drain.
    public mutating func stop() -> Result<StopAction, Refusal> {
        switch state {
        case .created:
            state = .stopped
            return .success(.callBackNow)
        case .started:
            state = .stopping
            return .success(.stopServer)
        case .stopping, .stopped: return .failure(.alreadyStopping)
        }
    }

    /// The server's stop callback ran: every handle is closed.
    public mutating func stopped() { state = .stopped }

    /// Free: before start, or once stopped.
    public func free() -> Refusal? {
        switch state {
        case .created, .stopped: return nil
        case .started, .stopping: return .stillRunning
        }
    }

    public var isRunning: Bool { state == .started }
}
