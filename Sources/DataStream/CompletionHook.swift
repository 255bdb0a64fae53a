import DataStreamCore
import Glibc
import Logging
import UV

/// Runs the completion hook (`--on-stored COMMAND`) for every stored upload, as tusd's
/// post-finish hook: `/bin/sh -c COMMAND` with the upload as one JSON object on its standard
/// input, its output and errors into the server's standard error. At most `limit` run at once
/// (`HookQueue` decides); one that runs past the timeout is killed. A hook that fails, is
/// killed or cannot start is logged and counted; it never blocks the loop (`uv_spawn`, the
/// input already in a pipe) and never runs for an upload that was not stored.
///
/// Owned by the `Server`; loop thread only. Holds each child's process handle until its exit.
final class CompletionHook {
    private let command: String
    private unowned let server: Server
    /// A hook to run: the stored name (for log lines) and the JSON it reads.
    private struct Job {
        let name: String
        let input: [UInt8]
    }
    private var queue: HookQueue<Job>
    private var running: [ObjectIdentifier: (process: ChildProcess, startedAt: UInt64, upload: String)] = [:]
    private var stopped = false
    private var stopCompletion: (() -> Void)?
    private var closing = 0

    init(command: String, limit: Int, timeout: Double, server: Server) {
        self.command = command
        self.server = server
        queue = HookQueue(maxRunning: limit, timeout: TimeLimit.units(timeout, perSecond: 1e9) ?? .max)
    }

    /// An upload is under its final name.
    func stored(_ upload: StoredUpload) {
        guard !stopped else { return }
        switch queue.submit(Job(name: upload.storedName, input: CompletionHook.json(upload))) {
        case .start(let input): start(input)
        case .queued: break
        case .dropped:
            server.statistics.hooksDropped += 1
            server.metrics.hook("dropped")
            server.noisy(.hookDropped, .warning, "--on-stored: \(queue.waitingCount) hooks waiting already; not run for \(upload.storedName)")
        }
    }

    /// The upload as the hook reads it.
    static func json(_ s: StoredUpload) -> [UInt8] {
        let object: [(String, JSONValue)] = [
            ("name", .string(s.storedName)),
            ("path", .string(s.path)),
            ("size", .number(s.upload.size)),
            ("digest", s.digest.isEmpty ? .null : .string(s.digest.hexString)),
            ("digest_algorithm", s.digestAlgorithm.map(JSONValue.string) ?? .null),
            ("transport", .string(s.upload.transport.name)),
            ("peer", .string(s.upload.peer)),
            ("client_name", s.upload.clientName.map(JSONValue.string) ?? .null),
            ("upload_id", s.upload.uploadID.map(JSONValue.string) ?? .null),
            ("duration", .double(s.duration)),
        ]
        return Array((JSONValue.object(object).text + "\n").utf8)
    }

    private func start(_ job: Job) {
        let name = job.name
        do throws(UVOperationError) {
            let stdin = try FilledPipe.make(job.input)
            var started: ChildProcess?
            let process = try ChildProcess(loop: server.loop, path: "/bin/sh", arguments: ["sh", "-c", command], stdin: stdin) { [unowned self] status, signal in
                if let started { ended(started, status: status, signal: signal) }
            }
            started = process
            running[ObjectIdentifier(process)] = (process, monotonicNanoseconds(), name)
            server.statistics.hooksStarted += 1
        } catch {
            server.statistics.hooksFailed += 1
            server.metrics.hook("failed")
            server.logger.error("--on-stored: cannot start the hook for \(name): \(error)")
            if let next = queue.finished() { start(next) }
        }
    }

    private func ended(_ process: ChildProcess, status: Int64, signal: Int32) {
        guard let entry = running.removeValue(forKey: ObjectIdentifier(process)) else { return }
        let seconds = Double(monotonicNanoseconds() &- entry.startedAt) / 1e9
        if status == 0 && signal == 0 {
            server.statistics.hooksSucceeded += 1
            server.metrics.hook("succeeded")
            if server.logLevel <= .debug { server.logger.debug("--on-stored: hook for \(entry.upload) done in \(seconds) s") }
        } else if signal == SIGKILL, queue.hasTimedOut(startedAt: entry.startedAt, now: monotonicNanoseconds()) {
            server.statistics.hooksTimedOut += 1
            server.metrics.hook("timed_out")
            server.logger.warning("--on-stored: hook for \(entry.upload) killed after \(String(format: "%.1f", seconds)) s (the timeout)")
        } else {
            server.statistics.hooksFailed += 1
            server.metrics.hook("failed")
            server.logger.warning("--on-stored: hook for \(entry.upload) failed: \(signal != 0 ? "signal \(signal)" : "exit status \(status)")")
        }
        close(process)
        if !stopped, let next = queue.finished() { start(next) }
    }

    /// The server's sweep: kills hooks that ran past the timeout.
    func checkTimeouts(now: UInt64) {
        for entry in running.values where queue.hasTimedOut(startedAt: entry.startedAt, now: now) {
            try? entry.process.kill(SIGKILL)
        }
    }

    /// The server stops: hooks not started are not run; running ones go on by themselves, no
    /// longer watched. `completion` runs once every process handle is closed.
    func stop(_ completion: @escaping () -> Void) {
        stopped = true
        stopCompletion = completion
        let dropped = queue.discardWaiting()
        if dropped > 0 { server.logger.warning("--on-stored: \(dropped) hooks not run (the server stopped)") }
        for entry in running.values { close(entry.process) }
        running.removeAll()
        finishIfClosed()
    }

    private func close(_ process: ChildProcess) {
        closing += 1
        process.close { [self] in
            closing -= 1
            finishIfClosed()
        }
    }

    private func finishIfClosed() {
        guard closing == 0, let done = stopCompletion else { return }
        stopCompletion = nil
        done()
    }
}
