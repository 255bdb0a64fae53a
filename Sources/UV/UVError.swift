import CLibUV

/// A libuv error code: a negative `errno`-style number with its libuv name and message.
///
/// Matchable in `catch` and `switch` through the named static members, as swift-system's `Errno`.
/// Values are plain data; nobody owns anything here.
public struct UVError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The negative libuv status (for example `UV_ENOSPC`).
    public let code: Int32

    public init(code: Int32) { self.code = code }

    /// The short libuv name, for example `ENOSPC`. The libuv function is `uv_err_name`.
    public var name: String { String(cString: uv_err_name(code)) }

    /// The human message, for example `no space left on device`. The libuv function is `uv_strerror`.
    public var message: String { String(cString: uv_strerror(code)) }

    public var description: String { "\(name) (\(message))" }

    public static let endOfFile = UVError(code: UV_EOF.rawValue)
    public static let noBuffers = UVError(code: UV_ENOBUFS.rawValue)
    public static let fileExists = UVError(code: UV_EEXIST.rawValue)
    public static let noSuchFile = UVError(code: UV_ENOENT.rawValue)
    public static let noSpace = UVError(code: UV_ENOSPC.rawValue)
    public static let tooManyOpenFiles = UVError(code: UV_EMFILE.rawValue)
    public static let tooManyOpenFilesInSystem = UVError(code: UV_ENFILE.rawValue)
    public static let addressInUse = UVError(code: UV_EADDRINUSE.rawValue)
    public static let connectionRefused = UVError(code: UV_ECONNREFUSED.rawValue)
    public static let connectionReset = UVError(code: UV_ECONNRESET.rawValue)
    public static let brokenPipe = UVError(code: UV_EPIPE.rawValue)
    public static let canceled = UVError(code: UV_ECANCELED.rawValue)
    public static let invalidArgument = UVError(code: UV_EINVAL.rawValue)
    public static let permissionDenied = UVError(code: UV_EACCES.rawValue)
    public static let tryAgain = UVError(code: UV_EAGAIN.rawValue)
    public static let busy = UVError(code: UV_EBUSY.rawValue)
    public static let notADirectory = UVError(code: UV_ENOTDIR.rawValue)
    public static let loopDetected = UVError(code: UV_ELOOP.rawValue)
    public static let isDirectory = UVError(code: UV_EISDIR.rawValue)
    public static let badDescriptor = UVError(code: UV_EBADF.rawValue)
    public static let operationNotSupported = UVError(code: UV_ENOTSUP.rawValue)
}

/// A failed libuv operation: which operation, on what (a path or a peer), and the libuv error.
///
/// Its description reads like Node's `errnoException`:
/// "write `.datastream/partial/ab12.part` failed: ENOSPC (no space left on device)".
public struct UVOperationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The operation that failed, named after the libuv call without `uv_` (for example `fs_write`).
    public let operation: String
    /// The path or peer it was applied to, when there is one.
    public let target: String?
    /// The libuv error.
    public let error: UVError

    public init(_ operation: String, target: String? = nil, code: Int32) {
        self.operation = operation
        self.target = target
        self.error = UVError(code: code)
    }

    public var description: String {
        if let target { return "\(operation) `\(target)` failed: \(error)" }
        return "\(operation) failed: \(error)"
    }
}

/// Throws a `UVOperationError` when a libuv status is negative; returns the status otherwise.
@discardableResult
@inline(__always)
func check(_ status: Int32, _ operation: @autoclosure () -> String, target: @autoclosure () -> String? = nil) throws(UVOperationError) -> Int32 {
    if status < 0 { throw UVOperationError(operation(), target: target(), code: status) }
    return status
}
