// swift-host: a Swift program that embeds DataStream on a libuv loop it made itself, prints a
// line per upload event, and drains on SIGINT or SIGTERM so the loop closes cleanly.
//
//   swift run swift-host DIR [PORT]
//
// Lines: "listening tcp PORT", then "stored TRANSPORT NAME SIZE PATH" or
// "failed TRANSPORT SIZE REASON" per upload, then "loop closed: STATUS".
import CLibUV
import DataStream
import Glibc
import UV

/// A line on standard error (the C streams are shared mutable state to Swift 6: write the descriptor).
func warn(_ line: String) { _ = (line + "\n").withCString { write(2, $0, strlen($0)) } }
/// A line on standard output, flushed at once (a test reads it as it comes).
func say(_ line: String) {
    print(line)
    fflush(nil)
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    warn("usage: swift-host DIR [PORT]")
    exit(2)
}

// The host's loop: a uv_loop_t this program owns, lent to the server.
let raw = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
guard uv_loop_init(raw) == 0 else { exit(1) }
let loop = Loop(borrowing: UnsafeMutableRawPointer(raw))

var configuration = Server.Configuration()
configuration.directory = arguments[1]
do {
    try configuration.set("port", arguments.count > 2 ? arguments[2] : "0")
} catch {
    warn("swift-host: \(error)")
    exit(1)
}

do {
    let server = try Server(loop: loop, configuration: configuration)
    server.onEvent = { event in
        switch event {
        case .started: break
        case .stored(let file): say("stored \(file.upload.transport.name) \(file.storedName) \(file.upload.size) \(file.path)")
        case .failed(let upload, let reason, _, _): say("failed \(upload.transport.name) \(upload.size) \(reason)")
        }
    }
    let address = try server.start()
    say("listening tcp \(address.port)")

    var signals: [UV.Signal] = []
    for signum in [SIGINT, SIGTERM] {
        let s = try UV.Signal(loop: loop)
        try s.start(signum) { _ in
            server.drain(deadline: 5) { _ in
                for s in signals { s.close() }
            }
        }
        signals.append(s)
    }
    _ = loop.run()
}
catch {
    warn("swift-host: \(error)")
    exit(1)
}
let closed = uv_loop_close(raw)
say("loop closed: \(closed)")
raw.deallocate()
exit(closed == 0 ? 0 : 1)
