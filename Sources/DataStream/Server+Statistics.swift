extension Server {
    /// Counters, readable at any time on the loop thread.
    public struct Statistics: Sendable {
        public var connectionsAccepted: UInt64 = 0
        /// Connections served as HTTP, the requests they made, the requests that were not
        /// HTTP the parser accepts, and the responses sent by status.
        public var httpConnections: UInt64 = 0
        public var httpRequests: UInt64 = 0
        public var httpBadRequests: UInt64 = 0
        public var httpResponses: [Int: UInt64] = [:]
        /// Connections that became WebSockets at `/ws`, and those the frame codec closed for a
        /// bad frame (unmasked, an oversized control frame, bad UTF-8, a text message too long).
        public var webSocketConnections: UInt64 = 0
        public var webSocketProtocolErrors: UInt64 = 0
        /// Completion hooks (`--on-stored`): started, ended with status 0, failed (another
        /// status, a signal, or not started), killed at the timeout, not run (too many waiting).
        public var hooksStarted: UInt64 = 0
        public var hooksSucceeded: UInt64 = 0
        public var hooksFailed: UInt64 = 0
        public var hooksTimedOut: UInt64 = 0
        public var hooksDropped: UInt64 = 0
        public var uploadsStored: UInt64 = 0
        /// Native uploads announced again after they were stored, answered from their receipt
        /// (with the name they were stored under) instead of being stored twice.
        public var uploadsAlreadyStored: UInt64 = 0
        public var uploadsFailed: UInt64 = 0
        public var bytesReceived: UInt64 = 0
        public var udpDatagramsReceived: UInt64 = 0
        /// Datagrams that changed nothing: unknown sessions, wrong source, spoofed or stale cookies, garbage.
        public var udpDatagramsIgnored: UInt64 = 0
        public var udpDuplicates: UInt64 = 0
        public var udpSessionsRefused: UInt64 = 0
        public var udpDatagramsSent: UInt64 = 0
        /// Connections closed at once for `maxConnectionsPerAddress`, and times accepting paused
        /// at `maxConnections`.
        public var connectionsRefused: UInt64 = 0
        /// Native clients whose AUTH did not match the token.
        public var authenticationFailures: UInt64 = 0
        public var acceptPauses: UInt64 = 0
        /// Accepts that failed (out of descriptors: accepting pauses, see `acceptPauses`).
        public var acceptErrors: UInt64 = 0
        /// Reads made straight from a socket, without waiting for the loop to poll it (at accept
        /// and when a receive buffer comes back: `Connection.readWithoutPolling`), and
        /// connections that needed no more than the reads at accept (their seed upload was
        /// complete, they were refused, or their client had closed its side): never polled.
        public var readsWithoutPolling: UInt64 = 0
        public var servedAtAccept: UInt64 = 0
        /// Connections that waited for a receive buffer and then read straight from their socket
        /// at the server's next turn of the loop (`readSoon`), rather than being polled again
        /// (one that closed meanwhile, or found nothing to read, is not counted).
        public var readsAfterBufferWait: UInt64 = 0
        /// Connections closed by the header or the idle timeout.
        public var connectionsTimedOut: UInt64 = 0
        /// Large TCP uploads whose rest went straight from the socket to the file (`SocketDrain`),
        /// and the bytes that went that way.
        public var uploadsDrained: UInt64 = 0
        public var bytesDrained: UInt64 = 0
        /// The most drains that ran at once.
        public var peakDrainsRunning = 0
        public var udpBytesSent: UInt64 = 0
        /// Receives that held several datagrams coalesced by the kernel (receive offload).
        public var udpCoalescedReceives: UInt64 = 0
        public init() {}
    }
}
