/// The decisions a TCP connection makes beside its protocol (`ConnectionStateMachine`): when it
/// times out, when a draining server ends or cuts it, and which path an upload's bytes take.
///
/// A value that touches no socket, no file and no clock: time comes in as nanoseconds of a
/// monotonic clock (`uv_hrtime` in the driver), so every rule is tested without waiting.
///
/// Timeouts:
/// - header: no upload began within `headerTimeout` of the server being ready to read (accept,
///   or the end of a pause the server imposed);
/// - idle: the client sent nothing for `idleTimeout` while the next move was its own.
/// Time the server spends not listening (no buffer free, input held back while a file operation
/// runs) never counts against the client.
///
/// Paths for an upload's bytes:
/// - small: a seed upload of at most `SmallUploadBlocks.largest` bytes is held in memory and
///   stored in one work item at its end, while the small-upload budget lasts;
/// - slabs: bytes go through the receive slabs and are written in order (`UploadSink`);
/// - socket drain: the rest of a large upload moves straight from the socket to the file on
///   the threadpool (`SocketDrain`), always when it can splice (no digest), else only while few
///   drains run (a drain that copies through user space loses to the slabs when many run).
public struct ConnectionLifecycle {
    public struct Configuration: Sendable, Hashable {
        /// Seconds from ready-to-read until an upload must begin (0: no limit).
        public let headerTimeout: Double
        /// Seconds of silence from the client while the server waits for it (0: no limit).
        public let idleTimeout: Double
        /// Bytes of memory all small uploads may hold at once.
        public let smallUploadBudget: Int
        /// An upload with at least this many bytes still to come is drained from the socket.
        public let drainThreshold: UInt64
        /// ... and one with at least this many, when the drain splices or few drains run.
        public let drainThresholdWhenFew: UInt64
        /// "Few drains": fewer than this many running.
        public let fewDrains: Int
        /// The timeouts in nanoseconds (nil: none), converted once for every connection.
        fileprivate let headerLimit: UInt64?
        fileprivate let idleLimit: UInt64?

        public init(headerTimeout: Double = 30, idleTimeout: Double = 60, smallUploadBudget: Int = 8 << 20,
                    drainThreshold: UInt64 = 4 << 20, drainThresholdWhenFew: UInt64 = 256 << 10, fewDrains: Int = 4) {
            self.headerTimeout = headerTimeout
            self.idleTimeout = idleTimeout
            self.smallUploadBudget = smallUploadBudget
            self.drainThreshold = drainThreshold
            self.drainThresholdWhenFew = drainThresholdWhenFew
            self.fewDrains = fewDrains
            headerLimit = TimeLimit.units(headerTimeout, perSecond: 1e9)
            idleLimit = TimeLimit.units(idleTimeout, perSecond: 1e9)
        }
    }

    /// What the driver must do after a timer tick.
    public enum Action: Hashable, Sendable {
        case none
        /// Tell the protocol machine the connection timed out (`ConnectionStateMachine.timedOut`).
        case timeOut(ProtocolError)
        /// End the connection the way a draining server ends an idle one (`shuttingDown`).
        case shutDown
        /// Cut the connection now (the drain's deadline passed while the client held things up).
        case cut
    }

    /// Where a seed upload's bytes go.
    public enum SeedPath: Hashable, Sendable {
        /// Held in memory (a block of `capacity` bytes, counted against the budget) and stored
        /// in one work item at the end.
        case small(capacity: Int)
        /// Written as they arrive, through a partial file.
        case streamed
    }

    private enum Phase: Hashable {
        /// No upload has begun; the header clock runs from `since`.
        case awaitingUpload(since: UInt64)
        /// An upload has begun on this connection (later ones are timed by the idle clock only).
        case uploadBegun
        /// The server is draining and the connection was told to end.
        case shutDown
    }

    public let configuration: Configuration
    private var phase: Phase
    /// When the client last sent a byte (or the server last resumed reading).
    private var lastActivity: UInt64
    /// A socket drain could not be set up (no descriptor for it): the upload stays on the slabs.
    private var drainRefused = false

    public init(configuration: Configuration, now: UInt64) {
        self.configuration = configuration
        phase = .awaitingUpload(since: now)
        lastActivity = now
    }

    // MARK: - Time

    /// The client sent bytes or closed its side.
    public mutating func clientSent(now: UInt64) {
        lastActivity = now
    }

    /// The server starts reading again after a pause of its own (no buffer, the disk behind):
    /// the client's silence until now is not the client's fault.
    public mutating func readingResumed(now: UInt64) {
        lastActivity = now
        if case .awaitingUpload = phase { phase = .awaitingUpload(since: now) }
    }

    /// An upload began (seed size field, or native FILE): the header clock stops for good.
    public mutating func uploadBegan() {
        if case .awaitingUpload = phase { phase = .uploadBegun }
    }

    /// The server's periodic sweep. `listening`: the server is reading from the client now (not
    /// paused by itself); `waitingForClient`: the protocol's next move is the client's.
    public mutating func timerFired(now: UInt64, listening: Bool, waitingForClient: Bool) -> Action {
        guard listening else { return .none }
        switch phase {
        case .shutDown:
            return .none
        case .awaitingUpload(let since):
            if let limit = configuration.headerLimit, now > since, now - since > limit {
                return .timeOut(.headerTimeout(seconds: configuration.headerTimeout))
            }
        case .uploadBegun:
            break
        }
        if waitingForClient, let limit = configuration.idleLimit, now > lastActivity, now - lastActivity > limit {
            return .timeOut(.idleTimeout(seconds: configuration.idleTimeout))
        }
        return .none
    }

    // MARK: - The server's drain

    /// The server is draining (checked after every action): a connection with no upload in
    /// progress is told to end, once.
    public mutating func serverDraining(uploadInProgress: Bool) -> Action {
        guard !uploadInProgress, phase != .shutDown else { return .none }
        phase = .shutDown
        return .shutDown
    }

    /// The drain's deadline has passed: cut the connection if its next move is the client's or
    /// it has no upload; one the server is still storing goes on and is asked again later.
    public func drainDeadlinePassed(waitingForClient: Bool, uploadInProgress: Bool) -> Action {
        waitingForClient || !uploadInProgress ? .cut : .none
    }

    // MARK: - Paths

    /// Where a seed upload of `declared` bytes goes, with `smallBytesInUse` of the small-upload
    /// budget held by other uploads.
    public func seedPath(declared: UInt64, smallBytesInUse: Int) -> SeedPath {
        guard declared <= UInt64(SmallUploadBlocks.largest) else { return .streamed }
        let capacity = SmallUploadBlocks.capacity(for: Int(declared))
        return smallBytesInUse + capacity <= configuration.smallUploadBudget ? .small(capacity: capacity) : .streamed
    }

    /// Whether the rest of an upload (`bytesExpected` still to come) should be drained straight
    /// from the socket. `splices`: the drain needs no digest, so it can splice.
    public func shouldDrainSocket(bytesExpected: UInt64, splices: Bool, drainsRunning: Int) -> Bool {
        guard !drainRefused else { return false }
        return bytesExpected >= configuration.drainThreshold
            || (bytesExpected >= configuration.drainThresholdWhenFew && (splices || drainsRunning < configuration.fewDrains))
    }

    /// Whether reading at once (before the loop polls) suits an upload with `bytesExpected`
    /// bytes still to come: a large one is left to the loop and then to a drain, which splices.
    public func readsWithoutPolling(bytesExpected: UInt64) -> Bool {
        bytesExpected < configuration.drainThresholdWhenFew
    }

    /// A drain could not be set up: this connection's bytes stay on the slab path.
    public mutating func socketDrainRefused() {
        drainRefused = true
    }
}

/// The sizes of the blocks that hold small seed uploads whole: powers of two from 4 to 64 KiB,
/// each upload in the smallest that holds it.
public enum SmallUploadBlocks {
    /// The largest upload a block can hold.
    public static let largest = 64 * 1024
    public static let smallest = 4 * 1024

    /// Bytes a block for an upload of `bytes` takes (what the small-upload budget counts).
    public static func capacity(for bytes: Int) -> Int {
        precondition(bytes <= largest, "a small upload is at most \(largest) bytes")
        var capacity = smallest
        while capacity < bytes { capacity <<= 1 }
        return capacity
    }
}

/// Why a connection is not reading from its socket: it reads only while none holds.
///
/// Frozen and inlinable: the connection asks it on every read, and each constant, were it a
/// stored static across the module boundary, would cost a call to its lazy initialiser.
@frozen
public struct ReadPauses: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Its own bytes waiting for the disk passed their high water mark.
    @inlinable public static var flow: ReadPauses { ReadPauses(rawValue: 1 << 0) }
    /// Every receive slab of the process is in use.
    @inlinable public static var buffer: ReadPauses { ReadPauses(rawValue: 1 << 1) }
    /// Input is held back until a file operation answers.
    @inlinable public static var heldInput: ReadPauses { ReadPauses(rawValue: 1 << 2) }
    /// A socket drain is being set up (the upload's queued writes are flushing).
    @inlinable public static var drainStarting: ReadPauses { ReadPauses(rawValue: 1 << 3) }
    /// A socket drain owns the socket.
    @inlinable public static var draining: ReadPauses { ReadPauses(rawValue: 1 << 4) }
    /// The client closed its side: nothing more to read.
    @inlinable public static var peerEnded: ReadPauses { ReadPauses(rawValue: 1 << 5) }

    /// The pauses that are the server's doing: while one holds, the client's silence is not
    /// held against it (a running drain listens to the client itself).
    @inlinable public static var serversOwn: ReadPauses { [.buffer, .heldInput, .drainStarting] }
}
