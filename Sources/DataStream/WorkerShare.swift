import DataStreamCore
import UV

/// One worker's numbers in its supervisor's file of slots (`SharedSlots`, one slot per worker),
/// so that any worker's `/metrics`, and the supervisor's last line, count every worker of
/// `serve --workers`. Counters are written as they change (an atomic store beside the count,
/// so nothing counted is lost when a worker is killed); gauges at each sweep and scrape. A
/// worker started again after one died takes over that one's slot and goes on from what it
/// left, so the sums never go down. Loop thread only; which workers are alive (for the gauges)
/// is read on the threadpool.
final class WorkerShare {
    static let wordsPerSlot = MetricWords.count + ServerMetrics.Gauges.wordCount
    private static let gaugesAt = MetricWords.count

    private let slots: SharedSlots
    private let workers: Int
    /// The slot's counters when this worker took it over.
    private let base: [UInt64]
    /// The workers alive, as last read.
    private var live: [Int]
    private var reading = false

    init(_ place: Server.Configuration.WorkerSlot) throws(UVOperationError) {
        slots = try SharedSlots(path: place.file, slots: place.workers, wordsPerSlot: WorkerShare.wordsPerSlot, claim: .slot(place.slot))
        workers = place.workers
        base = (0..<MetricWords.count).map { [slots] in slots.load(slot: place.slot, word: $0) }
        live = slots.heldSlots()
    }

    /// Counter `word` of this worker is now `value`.
    @inline(__always)
    func counter(_ word: Int, _ value: UInt64) {
        slots.store(word, base[word] &+ value)
    }

    /// This worker's gauges now.
    func publish(_ gauges: ServerMetrics.Gauges) {
        for (i, n) in gauges.words.enumerated() { slots.store(WorkerShare.gaugesAt + i, n) }
    }

    /// Every worker's counters added up, and the gauges of those alive.
    var totals: (counters: [UInt64], gauges: ServerMetrics.Gauges) {
        let all = Array(0..<workers)
        let counters = (0..<MetricWords.count).map { slots.sum($0, over: all) }
        let gauges = (0..<ServerMetrics.Gauges.wordCount).map { slots.sum(WorkerShare.gaugesAt + $0, over: live) }
        return (counters, ServerMetrics.Gauges(words: gauges))
    }

    /// Reads again which workers are alive (on the threadpool).
    func refresh(_ loop: Loop) {
        guard !reading else { return }
        reading = true
        final class Reading: @unchecked Sendable { var held: [Int] = [] }
        let r = Reading(), slots = slots
        do {
            try loop.queueWork({ r.held = slots.heldSlots() }, after: { [self] in
                reading = false
                live = r.held
            })
        } catch {
            reading = false
        }
    }

    /// Every worker's uploads stored and failed, and file bytes received, added up: read by the
    /// supervisor once they have all ended.
    static func totals(file: String, workers: Int) -> Server.WorkerTotals? {
        guard let slots = try? SharedSlots(path: file, slots: workers, wordsPerSlot: wordsPerSlot, claim: .none) else { return nil }
        let all = Array(0..<workers)
        var t = Server.WorkerTotals()
        for transport in 0..<MetricWords.transports {
            t.uploadsStored += slots.sum(MetricWords.stored(transport), over: all)
            t.bytesReceived += slots.sum(MetricWords.bytes(transport), over: all)
            for code in 0..<UInt16(MetricWords.codes) { t.uploadsFailed += slots.sum(MetricWords.failed(transport, code: code), over: all) }
        }
        return t
    }
}

extension Server {
    /// What every worker of `serve --workers` did, added up.
    public struct WorkerTotals: Sendable {
        public var uploadsStored: UInt64 = 0
        public var uploadsFailed: UInt64 = 0
        public var bytesReceived: UInt64 = 0
    }

    /// Every worker's totals, from the file they publish them in (`Configuration.WorkerSlot.file`);
    /// nil if it cannot be read.
    public static func workerTotals(file: String, workers: Int) -> WorkerTotals? {
        WorkerShare.totals(file: file, workers: workers)
    }
}
