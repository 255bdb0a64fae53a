import CoreMetrics
import DataStreamCore
import Prometheus

/// What happened to an upload, for the counters behind `/metrics`.
enum UploadTally {
    case started, stored
    /// Failed with the `ProtocolError` code `code`.
    case failed(code: UInt16)
}

/// Where each counter lives in `ServerMetrics.words`: per transport (by its raw value) uploads
/// started, stored, file bytes received, then failures by `ProtocolError` code (0: a code this
/// build does not know); then completion hooks by outcome. A flat layout, so processes that
/// serve together (`WorkerShare`) can add theirs up word by word.
enum MetricWords {
    static let codes = 25
    static let perTransport = 3 + codes
    static let transports = UploadTransport.allCases.count + 1
    static let hookOutcomes = ["succeeded", "failed", "timed_out", "dropped"]
    static let count = transports * perTransport + hookOutcomes.count

    static func started(_ t: Int) -> Int { t * perTransport }
    static func stored(_ t: Int) -> Int { t * perTransport + 1 }
    static func bytes(_ t: Int) -> Int { t * perTransport + 2 }
    static func failed(_ t: Int, code: UInt16) -> Int { t * perTransport + 3 + (Int(code) < codes ? Int(code) : 0) }
    static func hook(_ outcome: String) -> Int { transports * perTransport + (hookOutcomes.firstIndex(of: outcome) ?? 1) }
}

/// The counters and gauges `/metrics` shows, in Prometheus's text format.
///
/// Drivers count in plain integers on the loop's thread (an upload started, stored or failed;
/// file bytes received), which costs an add per event. A scrape carries what changed since the
/// last one into swift-metrics counters and sets the gauges, over a Prometheus registry of
/// this server's own (not the process-wide default: an embedding host may have its own), then
/// renders the registry. With `--workers`, the counts and gauges are every worker's added up
/// (`WorkerShare`). Loop thread only.
final class ServerMetrics {
    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory

    /// This process's counts since start (`MetricWords`).
    @exclusivity(unchecked) private(set) var words = [UInt64](repeating: 0, count: MetricWords.count)
    /// What the swift-metrics counters were last brought to.
    private var reported = [UInt64](repeating: 0, count: MetricWords.count)
    private var counters: [String: CoreMetrics.Counter] = [:]

    /// Where this worker of `serve --workers` publishes each count as it changes (nil: a server
    /// on its own).
    var share: WorkerShare?

    /// A completion hook ended with `outcome`.
    func hook(_ outcome: String) { count(MetricWords.hook(outcome), 1) }

    @inline(__always)
    private func count(_ word: Int, _ n: UInt64) {
        words[word] &+= n
        share?.counter(word, words[word])
    }

    init() {
        factory = PrometheusMetricsFactory(registry: registry)
    }

    @inline(__always)
    func tally(_ tally: UploadTally, _ transport: UploadTransport) {
        let t = Int(transport.rawValue)
        switch tally {
        case .started: count(MetricWords.started(t), 1)
        case .stored: count(MetricWords.stored(t), 1)
        case .failed(let code): count(MetricWords.failed(t, code: code), 1)
        }
    }

    /// `n` bytes of an upload's file arrived over `transport`.
    @inline(__always)
    func received(_ n: Int, _ transport: UploadTransport) {
        count(MetricWords.bytes(Int(transport.rawValue)), UInt64(n))
    }

    /// What a scrape reads from the server besides the counters.
    struct Gauges {
        var connectionsOpen: Int
        var udpSessionsOpen: Int
        var uploadsInProgress: Int
        var diskHeldBytes: UInt64
        var fileQueueDepth: Int
        var draining: Bool

        /// As words, to be added up across workers.
        var words: [UInt64] {
            [UInt64(connectionsOpen), UInt64(udpSessionsOpen), UInt64(uploadsInProgress), diskHeldBytes, UInt64(fileQueueDepth), draining ? 1 : 0]
        }
        static let wordCount = 6
        init(connectionsOpen: Int, udpSessionsOpen: Int, uploadsInProgress: Int, diskHeldBytes: UInt64, fileQueueDepth: Int, draining: Bool) {
            self.connectionsOpen = connectionsOpen
            self.udpSessionsOpen = udpSessionsOpen
            self.uploadsInProgress = uploadsInProgress
            self.diskHeldBytes = diskHeldBytes
            self.fileQueueDepth = fileQueueDepth
            self.draining = draining
        }
        init(words w: [UInt64]) {
            self.init(connectionsOpen: Int(clamping: w[0]), udpSessionsOpen: Int(clamping: w[1]), uploadsInProgress: Int(clamping: w[2]),
                      diskHeldBytes: w[3], fileQueueDepth: Int(clamping: w[4]), draining: w[5] > 0)
        }
    }

    /// The Prometheus text exposition of every metric now: of `totals` (counter words) and
    /// `gauges` if given (every worker's), else of this process's.
    func render(_ gauges: Gauges, totals: [UInt64]? = nil) -> [UInt8] {
        let now = totals ?? words
        for transport in UploadTransport.allCases {
            let t = Int(transport.rawValue)
            let dims = [("transport", transport.name)]
            advance("datastream_uploads_started_total", dims, at: MetricWords.started(t), to: now)
            advance("datastream_uploads_stored_total", dims, at: MetricWords.stored(t), to: now)
            advance("datastream_received_bytes_total", dims, at: MetricWords.bytes(t), to: now)
            for code in 0..<UInt16(MetricWords.codes) where now[MetricWords.failed(t, code: code)] > 0 {
                advance("datastream_uploads_failed_total", dims + [("reason", ProtocolError.label(code: code))], at: MetricWords.failed(t, code: code), to: now)
            }
        }
        for outcome in MetricWords.hookOutcomes where now[MetricWords.hook(outcome)] > 0 {
            advance("datastream_hooks_total", [("outcome", outcome)], at: MetricWords.hook(outcome), to: now)
        }
        gauge("datastream_connections_open", gauges.connectionsOpen)
        gauge("datastream_udp_sessions_open", gauges.udpSessionsOpen)
        gauge("datastream_uploads_in_progress", gauges.uploadsInProgress)
        gauge("datastream_disk_budget_held_bytes", Int(clamping: gauges.diskHeldBytes))
        gauge("datastream_file_queue_depth", gauges.fileQueueDepth)
        gauge("datastream_draining", gauges.draining ? 1 : 0)
        return registry.emitToBuffer()
    }

    private func advance(_ label: String, _ dimensions: [(String, String)], at word: Int, to now: [UInt64]) {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        let counter = counters[key] ?? {
            let c = CoreMetrics.Counter(label: label, dimensions: dimensions, factory: factory)
            counters[key] = c
            return c
        }()
        if now[word] > reported[word] { counter.increment(by: Int64(clamping: now[word] - reported[word])) }
        reported[word] = now[word]
    }

    private var gauges: [String: CoreMetrics.Gauge] = [:]
    private func gauge(_ label: String, _ value: Int) {
        let g = gauges[label] ?? {
            let g = CoreMetrics.Gauge(label: label, factory: factory)
            gauges[label] = g
            return g
        }()
        g.record(value)
    }
}

extension Server {
    /// The gauges `/metrics` shows, now.
    var currentGauges: ServerMetrics.Gauges {
        let inProgress = connections.filter(\.hasUploadInProgress).count + (udp?.uploadsInProgress ?? 0)
        return .init(connectionsOpen: connections.count, udpSessionsOpen: udpSessionCount, uploadsInProgress: inProgress,
                     diskHeldBytes: disk.reserved, fileQueueDepth: loop.threadpoolRequestsInFlight, draining: isDraining)
    }

    /// Counts an upload event for `/metrics` (beside `emit`, which reports it to the host).
    @inline(__always)
    func tally(_ tally: UploadTally, _ transport: UploadTransport) {
        metrics.tally(tally, transport)
    }

    /// The response to one of the HTTP resources the server answers itself.
    func httpResource(_ resource: HTTPConnectionMachine.Resource) -> HTTPResponse {
        switch resource {
        case .page:
            return HTTPResponse(status: 200, headers: [HTTPHeader("Content-Type", "text/html; charset=utf-8"),
                                                       HTTPHeader("Cache-Control", "no-cache"),
                                                       HTTPHeader("Content-Security-Policy", UploadPage.contentSecurityPolicy)],
                                body: UploadPage.html)
        case .health:
            return .json(200, [("status", .string("alive"))])
        case .ready:
            return isDraining ? .json(503, [("status", .string("draining"))]) : .json(200, [("status", .string("ready"))])
        case .metrics:
            let body: [UInt8]
            if let share = workerShare {
                // Every worker's, this one's gauges as of now.
                share.publish(currentGauges)
                let totals = share.totals
                body = metrics.render(totals.gauges, totals: totals.counters)
            } else {
                body = metrics.render(currentGauges)
            }
            return HTTPResponse(status: 200, headers: [HTTPHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: body)
        }
    }
}
