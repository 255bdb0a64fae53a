import DataStreamCore

extension Server {
    /// Settings. Defaults are those of `datastream serve`.
    public struct Configuration: Sendable {
        public var host = "127.0.0.1"
        public var port = 9000
        public var directory = "./received"
        /// When set, native clients must authenticate with this token.
        public var token: String?
        /// fsync each file before it is linked into place, and the directory after.
        public var fsync = false
        public var maxFileSize: UInt64 = 1 << 40
        /// The longest client file name (native protocol), in UTF-8 bytes.
        public var maxNameLength = NamePolicy.defaultMaxLength
        /// Bytes to keep free on the target file system: an upload whose announced size does
        /// not fit in the free space less this and less what uploads in progress hold is
        /// refused at its start (ERROR/RESULT "disk full", code 23). See `DiskBudget`.
        public var minFreeSpace: UInt64 = 64 << 20
        /// At start, native partials not written to for this many seconds are removed (and
        /// seed partials of ended processes always), and receipts of uploads stored that long
        /// ago (a client sending one again after that gets a second copy). Default 7 days.
        public var partialMaxAge: Double = 7 * 86_400
        /// Caps on the unfinished native uploads (partials) one address and the whole server
        /// may hold, in count and bytes; a new upload past a cap is refused ("server busy",
        /// code 24). Partials left empty by their connection are removed at once.
        public var partialLimits = PartialLedger.Limits()
        /// Connections at once; at the cap the server stops accepting (new ones wait in the
        /// kernel's backlog) and resumes below it. nil: half the descriptor limit
        /// (`RLIMIT_NOFILE`) less 128, since a connection with an upload holds its socket and
        /// its file, so accept does not run out of descriptors.
        public var maxConnections: Int?
        /// Connections at once from one IP address (0: no limit). Over it a connection gets an
        /// ERROR frame (code 20) and is closed before anything is read.
        public var maxConnectionsPerAddress = 0
        /// Seconds from accept until an upload begins (native: HELLO to FILE; seed: the size
        /// field); then the connection is closed. Time the server spends not reading (no buffer
        /// free) does not count. Slow-but-alive uploads are not limited by it. 30 s: generous to
        /// a client on an overloaded machine, still short for a slowloris.
        public var headerTimeout: Double = 30
        /// Seconds without a byte from the client while the server waits for one; the connection
        /// is then closed (a native partial stays resumable, a seed partial is deleted). Never a
        /// limit on an upload's total time.
        public var idleTimeout: Double = 60
        /// Listen on a non-loopback address without a token (otherwise `start` refuses).
        public var allowAnonymous = false
        /// Accept the seed protocols (TCP and UDP), which cannot authenticate, on a non-loopback
        /// address (on loopback they are always on).
        public var allowSeedProtocol = false
        public var backlog: Int32 = 4096
        /// Per-connection buffered bytes: pause reading above `high`, resume at `low`. Kept small
        /// on purpose: the threadpool copies each write out of the receive slabs into the page
        /// cache, and that copy is several times cheaper while the slabs are still in cache.
        public var connectionBufferLow = 512 << 10
        public var connectionBufferHigh = 1 << 20
        /// Whole-process receive memory: reads wait for a buffer when it is all in use. Sized
        /// so that thousands of concurrent uploads stay within the memory budget of
        /// docs/DESIGN.md without losing throughput.
        public var processBufferBudget = 16 << 20
        /// Seed uploads of at most 64 KiB are copied into memory of their own and stored in one
        /// threadpool work item at the end; this caps that memory for all of them together
        /// (beyond it, small uploads are written as they arrive, like large ones).
        public var smallUploadBudget = 8 << 20
        /// Write seed uploads (small ones held in memory and streamed ones alike) into a file
        /// without a name (`O_TMPFILE`) linked into place when complete; off, or where the file
        /// system cannot, a named partial under `.datastream/partial` is used.
        public var unnamedSeedFiles = true
        /// Receive UDP (seed and native reliable UDP) on the same loop.
        public var udpEnabled = true
        /// Answer HTTP/1.1 on the TCP port (`PUT /NAME`, `/metrics`, `/healthz`, `/readyz`):
        /// a connection whose first byte begins an HTTP method is served as HTTP.
        public var httpEnabled = true
        /// A shell command run for every stored upload, with the upload as JSON on its standard
        /// input (`CompletionHook`); nil: none.
        public var onStored: String?
        /// Completion hooks running at once (more wait their turn).
        public var onStoredLimit = 4
        /// Seconds a completion hook may run before it is killed.
        public var onStoredTimeout: Double = 60
        /// The longest HTTP request head: target and header fields, in bytes (431 past it).
        public var maxHTTPHeadBytes = 16 << 10
        /// The UDP port; nil means the TCP port's number (the bound one when `port` is 0).
        public var udpPort: Int?
        /// The UDP socket receive buffer to ask the kernel for (past rmem_max as root).
        public var udpReceiveBuffer: Int32 = 32 << 20
        /// Let the kernel coalesce runs of equal-size datagrams into one receive (`UDP_GRO`).
        public var udpReceiveOffload = true
        /// Seconds without a datagram before a UDP session is closed.
        public var udpIdleTimeout: Double = 30
        /// Ring memory per native UDP session, and for all of them together.
        public var udpWindowBytes = 16 << 20
        public var udpMemoryBudget = 512 << 20
        public var udpMaxSessions = 256
        public var udpMaxSessionsPerAddress = 32
        public var udpMaxSeedSessions = 64
        /// Seed UDP sources at once from one IP address (one host cannot take every slot).
        public var udpMaxSeedSessionsPerAddress = 16
        /// Proxies allowed to send a PROXY protocol v2 header (`--proxy-protocol`): numeric
        /// addresses or prefixes (`10.0.0.0/8`, `::1`). A connection from one of them must begin
        /// with a header, and is then served as coming from the client it names; from anyone
        /// else a PROXY header is refused. Empty: none (the default).
        public var proxyProtocolFrom: [String] = []
        /// One of several processes serving the same ports (`serve --workers`): the TCP and UDP
        /// sockets are bound with `SO_REUSEPORT`, so the kernel spreads connections and UDP
        /// sources over the processes that bind them.
        public var sharedPorts = false
        /// The secret UDP handshake cookies are made with (32 bytes); nil: a random one of this
        /// process's own. Processes sharing a UDP port share it, so a source whose datagrams
        /// move to another of them (one restarted) keeps its cookie.
        public var udpCookieSecret: [UInt8]?
        /// One worker of `serve --workers`: where it publishes its numbers for the others'
        /// `/metrics` and the supervisor's last line (`WorkerShare`).
        public var workerSlot: WorkerSlot?
        public struct WorkerSlot: Sendable {
            /// The supervisor's file of slots (one per worker).
            public var file: String
            public var slot: Int
            public var workers: Int
            public init(file: String, slot: Int, workers: Int) {
                self.file = file
                self.slot = slot
                self.workers = workers
            }
        }
        public init() {}
    }
}
