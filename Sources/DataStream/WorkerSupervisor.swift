import DataStreamCore
import Glibc
import UV

/// The supervisor of `serve --workers N`: N worker processes (this executable, `serve` with the
/// same options) each run their own loop on the same ports (`SO_REUSEPORT`: see
/// `Server.Configuration.sharedPorts`). The decisions are `WorkerSupervisorMachine`'s; this
/// driver starts the processes, reads their "listening" lines, restarts one that dies, passes
/// SIGTERM and SIGINT on as a drain, and reports the exit. Runs on a loop of its own, on the
/// caller's thread; owns its handles.
public final class WorkerSupervisor {
    /// What to run and how.
    public struct Plan: Sendable {
        /// The executable to start (this one: `/proc/self/exe`).
        public var executable: String
        /// Each worker's arguments after the program name, given its slot.
        public var arguments: @Sendable (Int) -> [String]
        public var workers: Int
        /// The environment of every worker: this process's, plus these ("NAME=value").
        public var environment: [String]
        /// Whether workers listen on UDP too: then a worker listens once it printed its UDP
        /// line, else its TCP one.
        public var udp: Bool
        public init(executable: String, arguments: @escaping @Sendable (Int) -> [String], workers: Int, environment: [String], udp: Bool) {
            self.executable = executable
            self.arguments = arguments
            self.workers = workers
            self.environment = environment
            self.udp = udp
        }
    }

    private let loop: Loop
    private let plan: Plan
    private var machine: WorkerSupervisorMachine
    private var processes: [ChildProcess?]
    private var outputs: [PipeReader?]
    private var lines: [[UInt8]]
    private var timers: [Timer?]
    private var signals: [UV.Signal] = []
    private let onReady: () -> Void
    private let onWorkerEvent: (String) -> Void
    private var onExit: ((Int32, String?) -> Void)?
    private let started = monotonicSeconds()

    /// `onReady` runs once every worker listens; `onWorkerEvent` gets a line about each restart;
    /// `onExit` gets the exit status (and why, on a failure) once every worker has ended.
    public init(loop: Loop, plan: Plan, onReady: @escaping () -> Void, onWorkerEvent: @escaping (String) -> Void,
                onExit: @escaping (Int32, String?) -> Void) {
        self.loop = loop
        self.plan = plan
        self.machine = WorkerSupervisorMachine(workers: plan.workers)
        processes = Array(repeating: nil, count: plan.workers)
        outputs = Array(repeating: nil, count: plan.workers)
        lines = Array(repeating: [], count: plan.workers)
        timers = Array(repeating: nil, count: plan.workers)
        self.onReady = onReady
        self.onWorkerEvent = onWorkerEvent
        self.onExit = onExit
    }

    /// Restarts so far, by worker.
    public var restarts: [Int] { machine.restarts }

    private static func monotonicSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    private var now: Double { WorkerSupervisor.monotonicSeconds() - started }

    /// Starts the workers and watches SIGTERM and SIGINT.
    public func start() throws(UVOperationError) {
        for signum in [SIGTERM, SIGINT] {
            let s = try UV.Signal(loop: loop)
            try s.start(signum) { [unowned self] n in perform(machine.stopRequested(signal: n)) }
            signals.append(s)
        }
        perform(machine.begin(now: now))
    }

    private func perform(_ actions: [WorkerSupervisorMachine.Action]) {
        for action in actions {
            switch action {
            case .start(let i):
                spawn(i)
            case .ready:
                onReady()
            case .restartAt(let i, let at):
                schedule(i, at: at)
            case .signal(let i, let signal):
                try? processes[i]?.kill(signal)
            case .exit(let status, let reason):
                for s in signals { s.close() }
                signals = []
                for t in timers { t?.close() }
                let done = onExit
                onExit = nil
                done?(status, reason)
            }
        }
    }

    private func spawn(_ i: Int) {
        if machine.restarts[i] > 0 { onWorkerEvent("worker \(i) restarted (\(machine.restarts[i]) restarts so far)") }
        do throws(UVOperationError) {
            let (reader, writeEnd) = try PipeReader.make(loop: loop)
            outputs[i] = reader
            lines[i] = []
            // The reader keeps itself alive until closed (a Handle), so `unowned` is safe; not
            // `weak`, whose side table LeakSanitizer cannot follow.
            do throws(UVOperationError) {
                try reader.start(onData: { [unowned self] bytes in read(bytes, from: i) }, onEnd: { [unowned self, unowned reader] in
                    reader.close()
                    if outputs[i] === reader { outputs[i] = nil }
                })
            } catch {
                Glibc.close(writeEnd)  // (the child, which would have closed it, never starts)
                reader.close()
                outputs[i] = nil
                throw error
            }
            let environment = ProcessEnvironment.current + plan.environment
            processes[i] = try ChildProcess(loop: loop, path: plan.executable, arguments: ["datastream"] + plan.arguments(i), stdin: nil,
                                            stdout: writeEnd, environment: environment, detached: true) { [unowned self] status, signal in
                processes[i]?.close()
                processes[i] = nil
                perform(machine.exited(i, status: status, signal: signal, now: now))
            }
        } catch {
            onWorkerEvent("worker \(i) could not be started: \(error)")
            perform(machine.exited(i, status: 127, signal: 0, now: now))
        }
    }

    /// A worker's standard output, line by line: "listening ..." says it serves.
    private func read(_ bytes: [UInt8], from i: Int) {
        lines[i] += bytes
        while let newline = lines[i].firstIndex(of: 0x0A) {
            let line = String(decoding: lines[i][..<newline], as: UTF8.self)
            lines[i].removeSubrange(...newline)
            // The last of its listening lines: tcp, then udp unless it has none.
            if line.hasPrefix(plan.udp ? "listening udp" : "listening tcp") {
                if machine.restarts[i] > 0 { onWorkerEvent("worker \(i) listens again") }
                perform(machine.listening(i, now: now))
            }
        }
    }

    private func schedule(_ i: Int, at: Double) {
        do throws(UVOperationError) {
            let timer: Timer
            if let existing = timers[i] { timer = existing } else { timer = try Timer(loop: loop) }
            timers[i] = timer
            let wait = UInt64(max(0, (at - now) * 1000).rounded(.up))
            try timer.start(timeout: wait, repeat: 0) { [unowned self] in perform(machine.restartDue(i, now: max(now, at))) }
        } catch {
            perform(machine.restartDue(i, now: at))
        }
    }
}

/// This process's environment, as "NAME=value" strings.
enum ProcessEnvironment {
    static var current: [String] {
        var out: [String] = []
        var p = environ
        while let entry = p.pointee {
            out.append(String(cString: entry))
            p += 1
        }
        return out
    }
}
