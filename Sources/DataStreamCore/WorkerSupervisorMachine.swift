/// The decisions of `serve --workers N`'s supervisor: when to start each worker process, when
/// the server is ready (every worker listens), when to restart a worker that died, and when to
/// drain and exit. A value; its driver (`WorkerSupervisor`) feeds it what happened, with the
/// time, and carries out what it returns.
public struct WorkerSupervisorMachine: Sendable {
    public enum Action: Equatable, Sendable {
        /// Start worker `worker` (again, if it ran before).
        case start(worker: Int)
        /// Every worker listens: the server is ready (print the listening lines).
        case ready
        /// Ask again at `at` (seconds, the driver's clock) whether to restart `worker`.
        case restartAt(worker: Int, at: Double)
        /// Send `signal` to worker `worker`.
        case signal(worker: Int, signal: Int32)
        /// Every worker has ended: exit with `status`; `reason` says why if it is a failure.
        case exit(status: Int32, reason: String?)
    }

    private enum Phase: Equatable, Sendable {
        /// Workers are starting; none has been restarted yet.
        case starting
        case running
        /// A stop was asked for (or a worker could not start): waiting for every worker to end.
        case stopping(status: Int32, reason: String?)
        case ended
    }

    private enum Worker: Equatable, Sendable {
        case starting(since: Double)
        case listening(since: Double)
        /// Waiting to be started again (after `restartDelay` from its last start).
        case waiting
        case gone
    }

    /// Signals a stop forwards: the first drains, the second leaves at once (as `serve` does).
    public static let SIGINT: Int32 = 2
    public static let SIGTERM: Int32 = 15

    private var phase = Phase.starting
    private var workers: [Worker]
    /// A worker is started again at most once per this many seconds.
    public let restartDelay: Double
    private var began = false
    /// Stops asked for so far (the second is forwarded as it came).
    private var stops = 0
    /// Restarts so far, by worker.
    public private(set) var restarts: [Int]

    public init(workers: Int, restartDelay: Double = 1) {
        precondition(workers >= 1)
        self.workers = Array(repeating: .gone, count: workers)
        self.restarts = Array(repeating: 0, count: workers)
        self.restartDelay = restartDelay
    }

    public var workerCount: Int { workers.count }
    public var isReady: Bool { phase == .running }

    /// Starts every worker.
    public mutating func begin(now: Double) -> [Action] {
        guard phase == .starting, !began else { return [] }
        began = true
        return (0..<workers.count).map { i in
            workers[i] = .starting(since: now)
            return .start(worker: i)
        }
    }

    /// Worker `worker` said it listens.
    public mutating func listening(_ worker: Int, now: Double) -> [Action] {
        guard case .starting(let since) = workers[worker] else { return [] }
        workers[worker] = .listening(since: since)
        guard phase == .starting, workers.allSatisfy({ if case .listening = $0 { true } else { false } }) else { return [] }
        phase = .running
        return [.ready]
    }

    /// Worker `worker` ended (`status`, or the `signal` that ended it: 0 if none).
    public mutating func exited(_ worker: Int, status: Int64, signal: Int32, now: Double) -> [Action] {
        let was = workers[worker]
        workers[worker] = .gone
        switch phase {
        case .starting:
            // One that cannot start (its port, its directory) means none can serve: stop all.
            let how = signal != 0 ? "was killed by signal \(signal)" : "exited with status \(status)"
            return stop(status: 1, reason: "worker \(worker) \(how) before it listened", signal: WorkerSupervisorMachine.SIGTERM)
        case .running:
            restarts[worker] += 1
            let started: Double
            switch was {
            case .starting(let since), .listening(let since): started = since
            case .waiting, .gone: started = now - restartDelay
            }
            if now - started >= restartDelay {
                workers[worker] = .starting(since: now)
                return [.start(worker: worker)]
            }
            workers[worker] = .waiting
            return [.restartAt(worker: worker, at: started + restartDelay)]
        case .stopping:
            return finishIfAllGone()
        case .ended:
            return []
        }
    }

    /// The time asked for in `restartAt` came.
    public mutating func restartDue(_ worker: Int, now: Double) -> [Action] {
        guard phase == .running, workers[worker] == .waiting else { return [] }
        workers[worker] = .starting(since: now)
        return [.start(worker: worker)]
    }

    /// A stop signal reached the supervisor: the first drains every worker (`SIGTERM`), a
    /// second is passed on as it came (a worker leaves at once on its second).
    public mutating func stopRequested(signal: Int32) -> [Action] {
        stops += 1
        if stops > 1 {
            return alive.map { .signal(worker: $0, signal: signal) }
        }
        return stop(status: 0, reason: nil, signal: WorkerSupervisorMachine.SIGTERM)
    }

    private var alive: [Int] {
        workers.indices.filter { if case .starting = workers[$0] { true } else if case .listening = workers[$0] { true } else { false } }
    }

    private mutating func stop(status: Int32, reason: String?, signal: Int32) -> [Action] {
        if case .stopping = phase { return [] }
        if phase == .ended { return [] }
        phase = .stopping(status: status, reason: reason)
        for i in workers.indices where workers[i] == .waiting { workers[i] = .gone }
        return alive.map { .signal(worker: $0, signal: signal) } + finishIfAllGone()
    }

    private mutating func finishIfAllGone() -> [Action] {
        guard case .stopping(let status, let reason) = phase, alive.isEmpty else { return [] }
        phase = .ended
        return [.exit(status: status, reason: reason)]
    }
}
