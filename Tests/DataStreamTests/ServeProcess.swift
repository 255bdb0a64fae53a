import Foundation
import Glibc
import Testing

/// `datastream serve` as a child process, for what cannot be tried inside the test process:
/// a lowered descriptor limit, signals, kill -9. Started with `--port 0`; the port is read from
/// its first line of output. The process is killed (SIGKILL) if still running when this goes away.
final class ServeProcess {
    let process = Process()
    let port: Int
    let directory: String
    private let errorOutput = Pipe()
    private let output = Pipe()
    /// Everything the server writes to standard error (its log), collected as it comes.
    private(set) var log: PipeCollector!

    /// `shellPrefix` runs before `exec` in `sh -c` (for example `ulimit -n 64`).
    init(directory: String = BackgroundServer.temporaryDirectory() + "/in", arguments: [String] = [], shellPrefix: String = "", udp: Bool = false) throws {
        self.directory = directory
        let command = (["exec", CommandLineTests.binary, "serve", "--port", "0", "--dir", directory] + (udp ? [] : ["--no-udp"]) + arguments)
            .map { "'\($0)'" }.joined(separator: " ")
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", shellPrefix.isEmpty ? command : "\(shellPrefix) && \(command)"]
        process.standardOutput = output
        process.standardError = errorOutput
        try process.run()
        var line = [UInt8]()
        let reader = output.fileHandleForReading
        while line.last != 0x0A {
            let byte = reader.readData(ofLength: 1)
            if byte.isEmpty { break }
            line += byte
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("listening tcp "), let port = Int(text.split(separator: ":").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw TestError("serve did not start: \(text) \(String(decoding: errorOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))")
        }
        self.port = port
        log = PipeCollector(errorOutput)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()  // lets Foundation release what it holds for a running process
    }

    var isRunning: Bool { process.isRunning }

    /// Sends `signal` and waits (up to `timeout` seconds) for the exit; returns the exit status
    /// and everything the server wrote to standard error, or nil if it did not exit in time.
    func stop(signal: Int32 = SIGTERM, timeout: Double = 20) -> (status: Int32, log: String)? {
        if signal != 0 { kill(process.processIdentifier, signal) }
        guard waitForExit(process, seconds: timeout) else { return nil }
        return (process.terminationStatus, log.all())
    }

    /// CPU seconds (user + system) the server has used so far, from /proc.
    var cpuSeconds: Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // Fields after the command: state is [0]; utime [11], stime [12] (clock ticks).
        guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Names in the target directory (not the store's own `.datastream`).
    func storedFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0 != ".datastream" }.sorted()
    }

    func contents(_ name: String) -> [UInt8]? {
        FileManager.default.contents(atPath: directory + "/" + name).map { [UInt8]($0) }
    }

    /// Waits (bounded) until `condition` holds.
    func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        waitUntil(seconds, condition)
    }

    /// Whether the server has read everything `client` sent so far (nothing of it waits in the
    /// kernel: /proc/net/tcp), which is how a test knows the server has seen it.
    func hasRead(_ client: BlockingClient) -> Bool {
        kernelQueuedBytes(serverPort: port, clientPort: client.localPort) == 0
    }

    /// Waits (bounded) until the server has logged `line` (at least `count` times).
    func waitForLog(_ line: String, count: Int = 1, seconds: Double = 10) -> Bool {
        log.waitFor(line, count: count, seconds: seconds)
    }

    /// Descriptors the server has open, from /proc.
    var openDescriptors: Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/fd").count) ?? -1
    }
}
