import UV

/// A TCP connection the server accepted, whatever protocol it turned out to speak: what the
/// server's table (`ConnectionTable`) holds and what its sweep, drain and stop call.
///
/// `Connection` serves the seed and native protocols; when a connection's first bytes are an
/// HTTP request it hands its stream to an `HTTPConnection`, which takes its place in the table.
class ServedConnection {
    /// Its place in the server's table of open connections (-1 once it left). The server's own.
    @exclusivity(unchecked) var tableIndex = -1
    /// The peer as looked up at accept, when the server needed it (the per-address cap).
    let acceptedPeer: SocketAddress?

    init(acceptedPeer: SocketAddress?) {
        self.acceptedPeer = acceptedPeer
    }

    /// Whether an upload has begun and not ended (a draining server lets it finish).
    var hasUploadInProgress: Bool { false }
    /// The server's sweep, with the time: header and idle timeouts.
    func checkTimeouts(now: UInt64) {}
    /// The server drains: end now if idle, else once the upload in progress has ended.
    func shutDownWhenIdle() {}
    /// The drain's deadline has passed: end now unless the server is still storing.
    func cutIfWaitingForClient() {}
    /// The server stops: end now (native partials stay resumable).
    func abort() {}
}
