import DataStreamCore
import Glibc
import UV

/// Whether an upload fits on the target file system, decided when it starts rather than
/// discovered when the disk fills. Owned by the server; used on the loop thread only.
///
/// The free space is read with `statfs` on the threadpool (`refresh`, from the server's sweep
/// timer, at most a second old) and once at start. Every upload in progress holds a
/// reservation of its announced size until it ends; an upload fits when its size plus all
/// reservations plus `minimumFree` are within the last free space read. Bytes an upload has
/// already written count twice (in its reservation and as space used) until it ends:
/// conservative, never optimistic.
final class DiskBudget {
    /// Bytes to leave free (`--min-free-space`).
    let minimumFree: UInt64
    private let directory: String
    private var available: UInt64
    private(set) var reserved: UInt64 = 0
    private var refreshing = false

    init(directory: String, minimumFree: UInt64) {
        self.directory = directory
        self.minimumFree = minimumFree
        var stats = statvfs()
        available = statvfs(directory, &stats) == 0 ? UInt64(stats.f_bavail) &* UInt64(stats.f_frsize) : .max
    }

    /// Reserves `bytes` for an upload, or says why it does not fit.
    func reserve(_ bytes: UInt64) -> ProtocolError? {
        let (need, o1) = bytes.addingReportingOverflow(reserved)
        let (needAll, o2) = need.addingReportingOverflow(minimumFree)
        if o1 || o2 || needAll > available {
            let left = available > reserved &+ minimumFree ? available - reserved - minimumFree : 0
            return .diskFull(reason: "\(bytes) bytes announced, \(left) available (free space \(available) less \(minimumFree) kept free and \(reserved) held by uploads in progress)")
        }
        reserved += bytes
        return nil
    }

    /// Gives back a reservation (the upload ended, stored or not).
    func release(_ bytes: UInt64) {
        reserved -= min(bytes, reserved)
    }

    /// Reads the free space again on the threadpool (one read at a time).
    func refresh(_ fs: FileSystem) {
        guard !refreshing else { return }
        refreshing = true
        do {
            try fs.availableBytes(at: directory) { [self] result in
                refreshing = false
                if case .success(let bytes) = result { available = bytes }
            }
        } catch {
            refreshing = false
        }
    }
}
