import Foundation
import Glibc

/// Waits until `condition` holds, checking it again every few milliseconds, for at most
/// `seconds`; returns whether it came to hold. The one way the tests wait for something that
/// happens in another thread or process: they wait for the event itself, never for a fixed time.
func waitUntil(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        var ts = timespec(tv_sec: 0, tv_nsec: 2_000_000)
        nanosleep(&ts, nil)
    }
    return condition()
}

/// Waits (at most `seconds`) for `process` to exit; kills it if it did not. Returns whether it
/// exited by itself.
@discardableResult
func waitForExit(_ process: Process, seconds: Double = 30) -> Bool {
    let exited = waitUntil(seconds) { !process.isRunning }
    if !exited { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
    return exited
}

/// Collects everything a pipe delivers, on a thread of its own, so that a test can wait for a
/// line while the process that writes it runs.
final class PipeCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var ended = false

    init(_ pipe: Pipe) {
        let handle = pipe.fileHandleForReading
        let thread = Thread { [self] in
            while true {
                let chunk = handle.availableData
                lock.lock()
                if chunk.isEmpty { ended = true } else { data.append(chunk) }
                lock.unlock()
                if chunk.isEmpty { return }
            }
        }
        thread.start()
    }

    /// Everything so far.
    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }

    /// Everything, once the writer closed the pipe (at most `seconds`).
    func all(seconds: Double = 10) -> String {
        _ = waitUntil(seconds) { lock.lock(); defer { lock.unlock() }; return ended }
        return text
    }

    /// Waits until `needle` has appeared `count` times.
    func waitFor(_ needle: String, count: Int = 1, seconds: Double = 10) -> Bool {
        waitUntil(seconds) { text.components(separatedBy: needle).count - 1 >= count }
    }
}

/// Bytes the kernel holds, not yet read by the server, on the server's side of the loopback TCP
/// connection from `clientPort` to `serverPort` (from /proc/net/tcp; nil if there is no such
/// socket). A connection still in the listen backlog counts too.
func kernelQueuedBytes(serverPort: Int, clientPort: Int) -> Int? {
    // Read to the end (the kernel hands /proc/net/tcp out a page per read).
    guard let handle = FileHandle(forReadingAtPath: "/proc/net/tcp") else { return nil }
    defer { try? handle.close() }
    let table = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
    let local = String(format: "0100007F:%04X", serverPort), remote = String(format: "0100007F:%04X", clientPort)
    for line in table.split(separator: "\n").dropFirst() {
        let f = line.split(separator: " ")
        guard f.count > 4, f[1] == local, f[2] == remote else { continue }
        let queues = f[4].split(separator: ":")
        return queues.count == 2 ? Int(queues[1], radix: 16) : nil
    }
    return nil
}
