import CoreMetrics
import DataStreamCore
import Prometheus

/// What happened to an upload, for the counters behind `/metrics`.
enum UploadTally {
    case started, stored
    /// Failed with the `ProtocolError` code `code`.
    case failed(code: UInt16)
}

/// The counters and gauges `/metrics` shows, in Prometheus's text format.
///
/// Drivers count in plain integers on the loop's thread (an upload started, stored or failed;
/// file bytes received), which costs an add per event. A scrape carries what changed since the
/// last one into swift-metrics counters and sets the gauges, over a Prometheus registry of
/// this server's own (not the process-wide default: an embedding host may have its own), then
/// renders the registry. Loop thread only.
final class ServerMetrics {
    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory

    private struct PerTransport {
        var started: UInt64 = 0
        var stored: UInt64 = 0
        var bytes: UInt64 = 0
        var failed: [UInt16: UInt64] = [:]
    }
    /// Counts since start, by `UploadTransport.rawValue` (index 0 unused).
    @exclusivity(unchecked) private var counts = [PerTransport](repeating: PerTransport(), count: UploadTransport.allCases.count + 1)
    /// What the swift-metrics counters were last brought to.
    private var reported = [PerTransport](repeating: PerTransport(), count: UploadTransport.allCases.count + 1)
    private var counters: [String: CoreMetrics.Counter] = [:]
    /// Completion hooks by outcome (`succeeded`, `failed`, `timed_out`, `dropped`).
    private var hooks: [String: UInt64] = [:]
    private var hooksReported: [String: UInt64] = [:]

    /// A completion hook ended with `outcome`.
    func hook(_ outcome: String) { hooks[outcome, default: 0] += 1 }

    init() {
        factory = PrometheusMetricsFactory(registry: registry)
    }

    @inline(__always)
    func tally(_ tally: UploadTally, _ transport: UploadTransport) {
        let t = Int(transport.rawValue)
        switch tally {
        case .started: counts[t].started += 1
        case .stored: counts[t].stored += 1
        case .failed(let code): counts[t].failed[code, default: 0] += 1
        }
    }

    /// `n` bytes of an upload's file arrived over `transport`.
    @inline(__always)
    func received(_ n: Int, _ transport: UploadTransport) {
        counts[Int(transport.rawValue)].bytes &+= UInt64(n)
    }

    /// What a scrape reads from the server besides the counters.
    struct Gauges {
        var connectionsOpen: Int
        var udpSessionsOpen: Int
        var uploadsInProgress: Int
        var diskHeldBytes: UInt64
        var fileQueueDepth: Int
        var draining: Bool
    }

    /// The Prometheus text exposition of every metric now.
    func render(_ gauges: Gauges) -> [UInt8] {
        for transport in UploadTransport.allCases {
            let t = Int(transport.rawValue)
            let dims = [("transport", transport.name)]
            advance("datastream_uploads_started_total", dims, from: &reported[t].started, to: counts[t].started)
            advance("datastream_uploads_stored_total", dims, from: &reported[t].stored, to: counts[t].stored)
            advance("datastream_received_bytes_total", dims, from: &reported[t].bytes, to: counts[t].bytes)
            for (code, n) in counts[t].failed {
                var seen = reported[t].failed[code, default: 0]
                advance("datastream_uploads_failed_total", dims + [("reason", ProtocolError.label(code: code))], from: &seen, to: n)
                reported[t].failed[code] = seen
            }
        }
        for (outcome, n) in hooks {
            var seen = hooksReported[outcome, default: 0]
            advance("datastream_hooks_total", [("outcome", outcome)], from: &seen, to: n)
            hooksReported[outcome] = seen
        }
        gauge("datastream_connections_open", gauges.connectionsOpen)
        gauge("datastream_udp_sessions_open", gauges.udpSessionsOpen)
        gauge("datastream_uploads_in_progress", gauges.uploadsInProgress)
        gauge("datastream_disk_budget_held_bytes", Int(clamping: gauges.diskHeldBytes))
        gauge("datastream_file_queue_depth", gauges.fileQueueDepth)
        gauge("datastream_draining", gauges.draining ? 1 : 0)
        return registry.emitToBuffer()
    }

    private func advance(_ label: String, _ dimensions: [(String, String)], from reported: inout UInt64, to now: UInt64) {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        let counter = counters[key] ?? {
            let c = CoreMetrics.Counter(label: label, dimensions: dimensions, factory: factory)
            counters[key] = c
            return c
        }()
        if now > reported { counter.increment(by: Int64(clamping: now - reported)) }
        reported = now
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
            let inProgress = connections.filter(\.hasUploadInProgress).count + (udp?.uploadsInProgress ?? 0)
            let body = metrics.render(.init(connectionsOpen: connections.count, udpSessionsOpen: udpSessionCount, uploadsInProgress: inProgress,
                                            diskHeldBytes: disk.reserved, fileQueueDepth: loop.threadpoolRequestsInFlight, draining: isDraining))
            return HTTPResponse(status: 200, headers: [HTTPHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: body)
        }
    }
}
