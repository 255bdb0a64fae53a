import DataStream
import DataStreamCore
import Foundation
import UV

/// A bench run split over several threads, each with its own loop and `LoadGenerator`, the way
/// wrk and h2load use every core: thread k takes uploads k, k + N, k + 2N, ... and its share of
/// the connections and of the rate; the reports are merged into one (`Report.merged`).
public enum LoadGroup {
    /// The options of thread `k` of `threads` for a run of `options`.
    public static func share(of options: LoadGenerator.Options, thread k: Int, of threads: Int) -> LoadGenerator.Options {
        precondition(threads >= 1 && k >= 0 && k < threads)
        var o = options
        let n = UInt64(threads), i = UInt64(k)
        o.indexOffset = options.indexOffset + i * options.indexStride
        o.indexStride = options.indexStride * n
        o.uploads = options.uploads.map { $0 > i ? ($0 - i + n - 1) / n : 0 }
        o.concurrency = options.concurrency / threads + (k < options.concurrency % threads ? 1 : 0)
        if let rate = options.rate {
            o.rate = rate / Double(threads)
            o.scheduleOffset = options.scheduleOffset + Double(k) / rate
        }
        return o
    }

    /// Runs `threads` generators to the end (blocking the caller) and returns the merged report
    /// and the content the uploads derive from. A thread whose share is empty does not run.
    public static func run(_ options: LoadGenerator.Options, threads: Int) throws -> (LoadGenerator.Report, BenchContent) {
        let shares = (0..<threads).map { share(of: options, thread: $0, of: threads) }.filter { $0.uploads != 0 && $0.concurrency > 0 }
        let results = Results(count: shares.count)
        let group = DispatchGroup()
        for (k, share) in shares.enumerated() {
            group.enter()
            let thread = Thread {
                defer { group.leave() }
                do {
                    let loop = try Loop()
                    let generator = LoadGenerator(loop: loop, options: share)
                    try generator.run { results.set(k, .success($0)) }
                    loop.run()
                    try? loop.close()
                } catch {
                    results.set(k, .failure(error))
                }
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        group.wait()
        var parts: [LoadGenerator.Report] = []
        for r in results.all {
            switch r {
            case .success(let report)?: parts.append(report)
            case .failure(let error)?: throw error
            case nil: throw UVOperationError("loop_run", code: UVError.canceled.code)
            }
        }
        return (LoadGenerator.Report.merged(parts), BenchContent(seed: options.seed))
    }

    /// What each thread ended with, written by its thread and read after all have finished.
    private final class Results: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Result<LoadGenerator.Report, any Error>?]
        init(count: Int) { values = Array(repeating: nil, count: count) }
        func set(_ k: Int, _ r: Result<LoadGenerator.Report, any Error>) { lock.withLock { values[k] = r } }
        var all: [Result<LoadGenerator.Report, any Error>?] { lock.withLock { values } }
    }
}
