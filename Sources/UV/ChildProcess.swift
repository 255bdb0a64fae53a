import CLibUV
import Glibc

/// A child process started with `uv_spawn`: its exit is reported on the loop; it can be sent a
/// signal. Owned like every handle: it lives until `close` (call it once the exit is reported,
/// or to stop watching a child that goes on).
public final class ChildProcess: Handle {
    private var onExit: ((_ status: Int64, _ signal: Int32) -> Void)?
    /// The child's process id.
    public let pid: Int32

    /// Runs `path` with `arguments` (the first is its name), its standard input read from
    /// `stdin` (a descriptor, closed here once the child has it; nil: /dev/null), standard
    /// output to `stdout` (likewise closed here; nil: this process's standard error) and
    /// standard error to this process's. `environment` ("NAME=value" each) replaces this
    /// process's if given. A `detached` child leads a session of its own, so a terminal's
    /// SIGINT reaches only this process, which decides what the child hears. `onExit` gets the
    /// exit status and the signal that ended it (0 if none). The libuv function is `uv_spawn`.
    public init(loop: Loop, path: String, arguments: [String], stdin: Int32?, stdout: Int32? = nil, environment: [String]? = nil,
                detached: Bool = false, onExit: @escaping (_ status: Int64, _ signal: Int32) -> Void) throws(UVOperationError) {
        defer { if let stdin { Glibc.close(stdin) } }
        defer { if let stdout { Glibc.close(stdout) } }
        // A C array of C strings that lives until uv_spawn has returned.
        let cEnvironment: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = environment.map { names in
            let array = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: names.count + 1)
            for (i, entry) in names.enumerated() { array[i] = strdup(entry) }
            array[names.count] = nil
            return array
        }
        defer {
            if let cEnvironment, let environment {
                for i in 0..<environment.count { free(cEnvironment[i]) }
                cEnvironment.deallocate()
            }
        }
        let devNull = stdin == nil ? open("/dev/null", O_RDONLY | O_CLOEXEC) : -1
        defer { if devNull >= 0 { Glibc.close(devNull) } }
        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for a in cArguments { free(a) } }
        var stdio = [uv_stdio_container_t](repeating: uv_stdio_container_t(), count: 3)
        stdio[0].flags = UV_INHERIT_FD
        stdio[0].data.fd = stdin ?? devNull
        stdio[1].flags = UV_INHERIT_FD
        stdio[1].data.fd = stdout ?? 2
        stdio[2].flags = UV_INHERIT_FD
        stdio[2].data.fd = 2
        let spawned: Result<UnsafeMutableRawPointer, UVOperationError> = path.withCString { file in
            cArguments.withUnsafeMutableBufferPointer { args in
                stdio.withUnsafeMutableBufferPointer { containers in
                    var options = uv_process_options_t()
                    options.exit_cb = childExited
                    options.file = file
                    options.args = args.baseAddress
                    options.stdio_count = 3
                    options.stdio = containers.baseAddress
                    options.env = cEnvironment
                    if detached { options.flags = UInt32(UV_PROCESS_DETACHED.rawValue) }
                    // A failed uv_spawn has still put the handle on the loop: it is closed, then freed.
                    let raw = allocateForLibuv(uv_handle_size(UV_PROCESS))
                    let status = uv_spawn(loop.uv, raw.assumingMemoryBound(to: uv_process_t.self), &options)
                    guard status >= 0 else {
                        uv_close(raw.assumingMemoryBound(to: uv_handle_t.self), freeFailedSpawn)
                        return .failure(UVOperationError("spawn", target: path, code: status))
                    }
                    return .success(raw)
                }
            }
        }
        let raw = try spawned.get()
        pid = raw.assumingMemoryBound(to: uv_process_t.self).pointee.pid
        self.onExit = onExit
        super.init(loop: loop, initialisedHandle: raw)
    }

    /// Sends `signal` to the child (once it exited: an error). The libuv function is `uv_process_kill`.
    public func kill(_ signal: Int32) throws(UVOperationError) {
        _ = try check(uv_process_kill(raw.assumingMemoryBound(to: uv_process_t.self), signal), "process_kill")
    }

    override func releaseCallbacks() { onExit = nil }

    fileprivate func exited(_ status: Int64, _ signal: Int32) {
        let callback = onExit
        onExit = nil
        callback?(status, signal)
    }
}

private func childExited(_ p: UnsafeMutablePointer<uv_process_t>?, _ status: Int64, _ signal: Int32) {
    Handle.owner(p, as: ChildProcess.self).exited(status, signal)
}

private func freeFailedSpawn(_ h: UnsafeMutablePointer<uv_handle_t>?) {
    if let h { freeForLibuv(h) }
}
